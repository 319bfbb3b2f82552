//! Where pretrained weights come from: `model.pretrained` / `--pretrained` hold a
//! path, or `hf:OWNER/NAME[@REVISION]` for a Hugging Face Hub repository.

use std::fmt;
use std::path::{Path, PathBuf};

/// Marks a Hub repository in `model.pretrained` (a file named so starts with `./`).
pub const HUB_PREFIX: &str = "hf:";
/// The revision when a spec names none (the Hub's default branch).
pub const DEFAULT_REVISION: &str = "main";

/// A model repository on the Hub at a revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `OWNER/NAME` (or a bare `NAME`, as the Hub's oldest repositories are).
    pub repo: String,
    pub revision: String,
}

impl HubRef {
    /// Parses `OWNER/NAME[@REVISION]`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (text, DEFAULT_REVISION),
        };
        let usage = "use OWNER/NAME[@REVISION], e.g. timm/resnet18.a1_in1k";
        let parts: Vec<&str> = repo.split('/').collect();
        let name_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with(['-', '.'])
                && !p.contains("--")
                && !p.contains("..")
        };
        if parts.len() > 2 || !parts.iter().all(|p| name_ok(p)) {
            return Err(format!("`{text}` is not a Hub repository: {usage}"));
        }
        // A revision becomes a file path in the cache (`refs/REVISION`) and a URL part:
        // no way out of the folder, no spaces or control characters.
        let rev_ok = !revision.is_empty()
            && revision.len() <= 256
            && !revision.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '\\' | '?' | '#' | '%')
            })
            && revision
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if !rev_ok {
            return Err(format!("`{revision}` is not a revision of {repo}: {usage}"));
        }
        Ok(Self {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
        })
    }

    /// Whether the revision is a full commit hash (the cache keeps no ref for one).
    pub fn is_commit(&self) -> bool {
        self.revision.len() == 40 && self.revision.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// The command that fetches it.
    pub fn pull_command(&self) -> String {
        format!("vitrine weights pull {self}")
    }
}

/// `OWNER/NAME`, with `@REVISION` unless it is the default branch.
impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == DEFAULT_REVISION {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// What `model.pretrained` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pretrained {
    File(PathBuf),
    Hub(HubRef),
}

impl Pretrained {
    /// `None` for an empty setting (random initialisation).
    pub fn parse(setting: &Path) -> Result<Option<Self>, String> {
        if setting.as_os_str().is_empty() {
            return Ok(None);
        }
        match setting.to_str().and_then(|s| s.strip_prefix(HUB_PREFIX)) {
            Some(spec) => HubRef::parse(spec).map(|r| Some(Self::Hub(r))),
            None => Ok(Some(Self::File(setting.to_owned()))),
        }
    }
}

/// `hf:OWNER/NAME[@REVISION]` or the path.
impl fmt::Display for Pretrained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Hub(r) => write!(f, "{HUB_PREFIX}{r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_specs_parse_or_say_why_not() {
        let r = HubRef::parse("timm/resnet50.a1_in1k").expect("plain");
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str()),
            ("timm/resnet50.a1_in1k", "main")
        );
        assert_eq!(
            r.pull_command(),
            "vitrine weights pull timm/resnet50.a1_in1k"
        );
        let r = HubRef::parse("timm/resnet18.a1_in1k@refs/pr/3").expect("branch with slashes");
        assert_eq!(r.revision, "refs/pr/3");
        assert_eq!(r.to_string(), "timm/resnet18.a1_in1k@refs/pr/3");
        assert!(
            HubRef::parse(&format!(
                "a/b@{}",
                "0123456789abcdef0123456789abcdef01234567"
            ))
            .expect("commit")
            .is_commit()
        );
        assert!(HubRef::parse("gpt2").is_ok(), "legacy repos have no owner");
        for bad in [
            "",
            "a/b/c",
            "timm/",
            "/x",
            "timm/../etc",
            "timm/re snet",
            "a--b/c",
            "a/b@",
            "a/b@../../x",
            "a/b@x y",
        ] {
            let e = HubRef::parse(bad).expect_err(bad);
            assert!(e.contains("OWNER/NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_are_files_or_hub_repos() {
        assert_eq!(Pretrained::parse(Path::new("")), Ok(None));
        assert_eq!(
            Pretrained::parse(Path::new("w/resnet.safetensors")),
            Ok(Some(Pretrained::File("w/resnet.safetensors".into())))
        );
        let hub = Pretrained::parse(Path::new("hf:timm/resnet18.a1_in1k@v2"))
            .expect("hub")
            .expect("some");
        assert_eq!(hub.to_string(), "hf:timm/resnet18.a1_in1k@v2");
        // A file whose name starts like a spec stays reachable.
        assert!(matches!(
            Pretrained::parse(Path::new("./hf:odd.safetensors")),
            Ok(Some(Pretrained::File(_)))
        ));
        assert!(Pretrained::parse(Path::new("hf:not a repo")).is_err());
    }
}
