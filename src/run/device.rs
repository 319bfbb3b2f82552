//! `train.device`: "auto" | "cpu" | "cuda:N". Nothing else in vitrine assumes a device.
//!
//! Also what the chosen device is ([`info`]: the CPU's model, threads and vector
//! instructions, or the GPU's name, all with their memory), for the `started` event,
//! `vitrine train`'s output and the dashboard; and errors that say what to do when a GPU
//! cannot be used.
//!
//! A `cuda` build links the CUDA libraries (Candle 0.11 asks cudarc for dynamic
//! *linking*): when `libcuda.so.1` (the driver) or a CUDA 13 library is missing, the
//! system's loader stops the program before it starts, naming the library. What is
//! left to explain here is what the driver answers once it is there.

use std::sync::{Once, OnceLock};

use candle_core::{DType, Device, Tensor};

pub use crate::config::{DeviceChoice, parse_device};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "cuda:{0} asked for, but this vitrine was built without GPU support: rebuild it with scripts/build-cuda (`cargo build --release --features cuda` against CUDA 13; see README's GPU section), or use --device cpu"
    )]
    NotBuilt(usize),
    #[error("cuda:{ordinal} cannot be used: {reason}")]
    Cuda { ordinal: usize, reason: String },
}

/// The device to run on. `auto` takes CUDA device 0 when vitrine was built with the
/// `cuda` feature and a GPU answers, the CPU when there is none; a GPU that is there
/// but fails is an error, not a silent fall back to a device 100 times slower.
pub fn select(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) if !cfg!(feature = "cuda") => Err(DeviceError::NotBuilt(n)),
        DeviceChoice::Cuda(n) => open_cuda(n),
        DeviceChoice::Auto if !cfg!(feature = "cuda") => Ok(Device::Cpu),
        DeviceChoice::Auto => match open_cuda(0) {
            Err(DeviceError::Cuda { reason, .. }) if no_gpu(&reason) => {
                tracing::info!("device auto: {reason}; training on the CPU");
                Ok(Device::Cpu)
            }
            other => other,
        },
    }
}

/// `--device` of `index`, `eval`, `search`, `watch` and `dashboard`: where this
/// process runs models, whatever the run was trained on. Set once, at the binary's
/// edge, before any model loads.
static INFERENCE_DEVICE: OnceLock<DeviceChoice> = OnceLock::new();

/// Records `--device` for every model this process loads (the first call wins).
pub fn set_inference_device(choice: DeviceChoice) {
    let _ = INFERENCE_DEVICE.set(choice);
}

/// The `--device` given to this process, if any.
pub fn inference_device() -> Option<DeviceChoice> {
    INFERENCE_DEVICE.get().copied()
}

/// The device a run's model runs on for embedding and search: `--device` when
/// given (strictly: a device that cannot be used is an error), else the run's
/// `train.device`, with the CPU in its place when this build has no GPU support or
/// this machine no GPU, so that a run trained on a GPU stays usable anywhere. The
/// fall back is said once per process.
pub fn select_for_inference(trained_on: DeviceChoice) -> Result<Device, DeviceError> {
    match inference_device() {
        Some(choice) => select(choice),
        None => fall_back_to_cpu(trained_on, select(trained_on)),
    }
}

/// `selected` (the device the run was trained on), or the CPU when that failed only
/// because this build or machine has no GPU.
fn fall_back_to_cpu(
    trained_on: DeviceChoice,
    selected: Result<Device, DeviceError>,
) -> Result<Device, DeviceError> {
    static SAID: Once = Once::new();
    let why = match &selected {
        Err(DeviceError::NotBuilt(_)) => {
            Some("this vitrine was built without GPU support".to_string())
        }
        Err(DeviceError::Cuda { reason, .. }) if no_gpu(reason) => Some(reason.clone()),
        _ => None,
    };
    let Some(why) = why else {
        return selected;
    };
    let name = match trained_on {
        DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        DeviceChoice::Auto => "auto".into(),
        DeviceChoice::Cpu => "cpu".into(),
    };
    SAID.call_once(|| {
        tracing::warn!(
            "the run was trained on {name}, which cannot be used here ({why}); running its model on the CPU (--device chooses)"
        );
    });
    Ok(Device::Cpu)
}

/// Opens `cuda:n` and runs one small computation on it (a kernel from Candle's PTX
/// and a cuBLAS product), so that a driver that cannot load the kernels fails here,
/// with an explanation, rather than at the first training step.
fn open_cuda(n: usize) -> Result<Device, DeviceError> {
    let opened = std::panic::catch_unwind(|| {
        let device = Device::new_cuda(n)?;
        let ones = Tensor::ones((2, 2), DType::F32, &device)?;
        let sum = ones.matmul(&ones)?.affine(2.0, 1.0)?.sum_all()?;
        let sum = sum.to_scalar::<f32>()?;
        if sum != 20.0 {
            candle_core::bail!(
                "a test computation gave {sum} instead of 20: the GPU kernels do not run correctly"
            )
        }
        Ok(device)
    });
    let text = match opened {
        Ok(Ok(device)) => return Ok(device),
        Ok(Err(e)) => without_backtrace(e).to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the CUDA libraries panicked".into()),
    };
    Err(DeviceError::Cuda {
        ordinal: n,
        reason: explain(&text, cuda_device_count()),
    })
}

/// The error without the backtrace Candle attaches under `RUST_BACKTRACE` (a wall
/// of frames in a one-line message).
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

#[cfg(feature = "cuda")]
fn cuda_device_count() -> Option<i32> {
    candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().ok()
}

#[cfg(not(feature = "cuda"))]
fn cuda_device_count() -> Option<i32> {
    None
}

/// Whether an explained CUDA failure means "no GPU here" (`auto` then takes the CPU).
fn no_gpu(reason: &str) -> bool {
    reason.starts_with(NO_DRIVER) || reason.starts_with(NO_DEVICE)
}

const NO_DRIVER: &str = "no NVIDIA driver";
const NO_DEVICE: &str = "the NVIDIA driver sees no GPU";

/// What a CUDA failure means and what to do, from the error's text (the CUresult's
/// name is in it), followed by the original message.
pub fn explain(error: &str, devices: Option<i32>) -> String {
    let has = |code: &str| error.contains(code);
    let hint = if has("CUDA_ERROR_STUB_LIBRARY") {
        format!(
            "{NO_DRIVER}: the libcuda.so.1 found is the CUDA toolkit's stub, not the driver's (on a machine with a GPU, take the stubs folder off LD_LIBRARY_PATH; without one, use --device cpu)"
        )
    } else if has("CUDA_ERROR_NO_DEVICE") {
        format!("{NO_DEVICE} (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use --device cpu")
    } else if has("CUDA_ERROR_INVALID_DEVICE") {
        match devices {
            Some(n) => format!(
                "no such GPU: this machine has {n} (cuda:0 to cuda:{})",
                n - 1
            ),
            None => "no such GPU (nvidia-smi lists them; cuda:0 is the first)".into(),
        }
    } else if has("CUDA_ERROR_INSUFFICIENT_DRIVER") || has("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH") {
        "the NVIDIA driver is older than CUDA 13, which this vitrine was built against: update the driver (nvidia-smi shows the CUDA version it supports)".into()
    } else if has("CUDA_ERROR_UNSUPPORTED_PTX_VERSION") {
        "the NVIDIA driver is older than the nvcc that compiled vitrine's GPU kernels: update the driver, or rebuild with an nvcc no newer than the driver's CUDA version (scripts/build-cuda uses 13.0)".into()
    } else if has("CUDA_ERROR_NO_BINARY_FOR_GPU")
        || has("CUDA_ERROR_INVALID_PTX")
        || has("CUDA_ERROR_INVALID_IMAGE")
    {
        format!(
            "vitrine's GPU kernels were built for compute capability {} and do not load on this GPU: rebuild with its own, e.g. CUDA_COMPUTE_CAP=80 scripts/build-cuda for an A100 (nvidia-smi --query-gpu=compute_cap --format=csv)",
            option_env!("CUDA_COMPUTE_CAP").unwrap_or("(unknown)")
        )
    } else if has("CUDA_ERROR_OUT_OF_MEMORY") {
        "the GPU is out of memory (nvidia-smi shows what holds it)".into()
    } else if let Some(lib) = missing_library(error) {
        format!(
            "CUDA library {lib} not found: put the CUDA 13 libraries on LD_LIBRARY_PATH (see README's GPU section)"
        )
    } else {
        return error.to_owned();
    };
    format!("{hint} [{}]", error.trim())
}

/// The library named by cudarc's "Unable to dynamically load the \"cublas\" shared
/// library" (its dynamic-loading builds, should Candle choose them).
fn missing_library(error: &str) -> Option<String> {
    let rest = error.split("Unable to dynamically load the \"").nth(1)?;
    let name = rest.split('"').next()?;
    Some(format!("lib{name}.so"))
}

/// "cpu" or "cuda:N" for logs and events.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// What a device is, as a person choosing one wants to know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// The CPU's model or the GPU's name.
    pub name: String,
    /// CPU: threads and vector instructions; GPU: compute capability.
    pub detail: String,
    /// RAM for the CPU, device memory for a GPU (0 = unknown).
    pub memory_bytes: u64,
    /// Of which free when asked (the CPU's MemAvailable).
    pub memory_free_bytes: Option<u64>,
}

impl DeviceInfo {
    /// `"NVIDIA H200 (compute 9.0), 139.8 GiB memory, 139.2 GiB free"`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = self.name.clone();
        if !self.detail.is_empty() {
            let _ = write!(s, " ({})", self.detail);
        }
        if self.memory_bytes > 0 {
            let _ = write!(s, ", {} memory", gib(self.memory_bytes));
            if let Some(free) = self.memory_free_bytes {
                let _ = write!(s, ", {} free", gib(free));
            }
        }
        s
    }
}

/// Bytes as GiB with one decimal.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// What `device` is.
pub fn info(device: &Device) -> DeviceInfo {
    match device {
        Device::Cpu => cpu_info(
            std::fs::read_to_string("/proc/cpuinfo").ok().as_deref(),
            std::fs::read_to_string("/proc/meminfo").ok().as_deref(),
            candle_core::utils::get_num_threads(),
        ),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda_info(d),
        other => DeviceInfo {
            name: describe(other),
            ..DeviceInfo::default()
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda_info(device: &candle_core::CudaDevice) -> DeviceInfo {
    let stream = device.cuda_stream();
    let ctx = stream.context();
    let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
    DeviceInfo {
        name: ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
        detail: ctx
            .compute_capability()
            .map(|(major, minor)| format!("compute {major}.{minor}"))
            .unwrap_or_default(),
        memory_bytes: total as u64,
        memory_free_bytes: (total > 0).then_some(free as u64),
    }
}

/// The CPU from `/proc/cpuinfo` and `/proc/meminfo` (absent off Linux), the threads
/// the kernels use and the vector instructions they run.
pub fn cpu_info(cpuinfo: Option<&str>, meminfo: Option<&str>, threads: usize) -> DeviceInfo {
    let field = |text: &str, key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    let name = cpuinfo
        .and_then(|t| field(t, "model name").or_else(|| field(t, "Model")))
        .map_or_else(
            || format!("{} CPU", std::env::consts::ARCH),
            |n| n.split_whitespace().collect::<Vec<_>>().join(" "),
        );
    let kib = |key: &str| {
        meminfo
            .and_then(|t| field(t, key))
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    DeviceInfo {
        name,
        detail: format!(
            "{threads} threads, {}",
            simd_name(vitrine_kernels::simd::level())
        ),
        memory_bytes: kib("MemTotal").unwrap_or(0),
        memory_free_bytes: kib("MemAvailable"),
    }
}

fn simd_name(level: vitrine_kernels::simd::Level) -> &'static str {
    use vitrine_kernels::simd::Level;
    match level {
        Level::Avx512 => "AVX-512",
        Level::Avx2 => "AVX2+FMA",
        Level::Baseline if cfg!(target_arch = "x86_64") => "SSE2",
        Level::Baseline => "baseline SIMD",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_asked_of_a_cpu_build_is_a_clear_error() {
        assert!(matches!(select(DeviceChoice::Cpu), Ok(Device::Cpu)));
        if !cfg!(feature = "cuda") {
            let e = select(DeviceChoice::Cuda(1)).expect_err("no GPU support");
            let text = e.to_string();
            assert!(
                text.contains("cuda:1") && text.contains("--features cuda"),
                "{text}"
            );
            assert!(matches!(select(DeviceChoice::Auto), Ok(Device::Cpu)));
        }
    }

    #[test]
    fn inference_falls_back_to_the_cpu_only_where_there_is_no_gpu() {
        let not_built = Err(DeviceError::NotBuilt(0));
        assert!(matches!(
            fall_back_to_cpu(DeviceChoice::Cuda(0), not_built),
            Ok(Device::Cpu)
        ));
        let no_driver = Err(DeviceError::Cuda {
            ordinal: 0,
            reason: explain("DriverError(CUDA_ERROR_NO_DEVICE, \"none\")", None),
        });
        assert!(matches!(
            fall_back_to_cpu(DeviceChoice::Cuda(0), no_driver),
            Ok(Device::Cpu)
        ));
        // A GPU that is there but fails stays an error: 100 times slower is no fix.
        let broken = Err(DeviceError::Cuda {
            ordinal: 0,
            reason: explain("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"oom\")", None),
        });
        assert!(fall_back_to_cpu(DeviceChoice::Cuda(0), broken).is_err());
        // Without --device, a CPU build runs a GPU-trained run's model on the CPU.
        if !cfg!(feature = "cuda") && inference_device().is_none() {
            assert!(matches!(
                select_for_inference(DeviceChoice::Cuda(0)),
                Ok(Device::Cpu)
            ));
        }
    }

    #[test]
    fn cuda_failures_are_explained_and_keep_the_original() {
        let stub = "DriverError(CUDA_ERROR_STUB_LIBRARY, \"<unknown>\")";
        let e = explain(stub, None);
        assert!(e.starts_with("no NVIDIA driver") && e.contains(stub), "{e}");
        assert!(no_gpu(&e));
        let e = explain(
            "DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device\")",
            None,
        );
        assert!(no_gpu(&e), "{e}");
        let e = explain(
            "DriverError(CUDA_ERROR_INVALID_DEVICE, \"invalid device\")",
            Some(2),
        );
        assert!(e.contains("this machine has 2 (cuda:0 to cuda:1)"), "{e}");
        assert!(!no_gpu(&e));
        let e = explain(
            "DriverError(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, \"x\") when loading affine",
            None,
        );
        assert!(e.contains("driver is older than the nvcc"), "{e}");
        assert!(!no_gpu(&e));
        let e = explain(
            "Unable to dynamically load the \"cublas\" shared library - searched for library names: [\"cublas\", \"cublas64_13\"]",
            None,
        );
        assert!(
            e.starts_with(
                "CUDA library libcublas.so not found: put the CUDA 13 libraries on LD_LIBRARY_PATH"
            ),
            "{e}"
        );
        // Anything else passes through as it came.
        assert_eq!(explain("something new", None), "something new");
    }

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\nflags\t\t: fpu\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\n";
    const MEMINFO: &str =
        "MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   16000000 kB\n";

    #[test]
    fn the_cpu_is_named_with_its_threads_and_memory() {
        let i = cpu_info(Some(CPUINFO), Some(MEMINFO), 6);
        assert_eq!(i.name, "AMD EPYC 7763 64-Core Processor");
        assert!(i.detail.starts_with("6 threads, "), "{}", i.detail);
        assert_eq!(i.memory_bytes, 32_000_000 * 1024);
        assert_eq!(i.memory_free_bytes, Some(16_000_000 * 1024));
        assert_eq!(
            i.summary(),
            format!(
                "AMD EPYC 7763 64-Core Processor ({}), 30.5 GiB memory, 15.3 GiB free",
                i.detail
            )
        );
        // Without /proc: the architecture, no memory figure.
        let bare = cpu_info(None, None, 1);
        assert!(bare.name.ends_with(" CPU"), "{}", bare.name);
        assert_eq!(bare.memory_bytes, 0);
        assert!(!bare.summary().contains("memory"), "{}", bare.summary());
        // An ARM cpuinfo names the model on a `Model` line.
        let arm = cpu_info(Some("processor : 0\nModel : Raspberry Pi 5\n"), None, 4);
        assert_eq!(arm.name, "Raspberry Pi 5");
    }

    #[test]
    fn this_machines_cpu_is_described() {
        let i = info(&Device::Cpu);
        assert!(!i.name.is_empty());
        assert!(i.detail.contains("threads"), "{}", i.detail);
        if cfg!(target_os = "linux") {
            assert!(i.memory_bytes > 0, "{i:?}");
        }
    }
}
