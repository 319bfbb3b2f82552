//! Decodes thumbnails and fits them to cells, off the UI thread.

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::{Outbox, spawn};
use crate::tui::app::WorkerEvent;
use crate::tui::thumb_cache::{Thumb, ThumbKey};

/// Decodes and fits thumbnails on `threads` threads with the picker chosen at start-up.
pub struct ThumbWorker {
    tx: Sender<ThumbKey>,
}

impl ThumbWorker {
    pub fn spawn(picker: ratatui_image::picker::Picker, threads: usize, out: Outbox) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<ThumbKey>();
        for _ in 0..threads.max(1) {
            let (rx, out, picker) = (rx.clone(), out.clone(), picker.clone());
            spawn("thumbs", &out.clone(), WorkerEvent::Status, move || {
                while let Ok(key) = rx.recv() {
                    let result = make_thumb(&picker, &key);
                    if !out.send(WorkerEvent::Thumb(key, result)) {
                        return;
                    }
                }
            });
        }
        Self { tx }
    }

    pub fn request(&self, key: ThumbKey) {
        let _ = self.tx.send(key);
    }
}

/// Decodes `key.path` and fits it into `key.cols × key.rows` cells.
pub fn make_thumb(picker: &ratatui_image::picker::Picker, key: &ThumbKey) -> Result<Thumb, String> {
    let img = crate::data::loader::open_image(&key.path)
        .map_err(|e| format!("{}: {e}", key.path.display()))?
        .decode()
        .map_err(|e| format!("{}: {e}", key.path.display()))?;
    let font = picker.font_size();
    // Fit the picture to the cells' pixels (up or down, keeping its aspect): the
    // protocol itself never enlarges a small image.
    let (w, h) = (
        (u32::from(key.cols) * u32::from(font.width)).max(1),
        (u32::from(key.rows) * u32::from(font.height)).max(1),
    );
    let img = img.resize(w, h, image::imageops::FilterType::Triangle);
    let protocol = picker
        .new_protocol(
            img,
            ratatui::layout::Size::new(key.cols, key.rows),
            ratatui_image::Resize::Fit(None),
        )
        .map_err(|e| e.to_string())?;
    Ok(Thumb(Arc::new(protocol)))
}
