//! Thumbnails in memory: what the views asked for, loading, drawn or unreadable,
//! keyed by (path, cell size), the oldest dropped first.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

/// Thumbnails kept in memory (oldest dropped first).
pub const THUMB_CACHE: usize = 400;

/// A thumbnail: an image fitted to a number of cells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThumbKey {
    pub path: PathBuf,
    pub cols: u16,
    pub rows: u16,
}

/// A thumbnail ready to draw (a ratatui-image protocol: kitty, sixel, iTerm2 or
/// half blocks), shared cheaply between frames.
#[derive(Clone)]
pub struct Thumb(pub Arc<ratatui_image::protocol::Protocol>);

impl std::fmt::Debug for Thumb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Thumb")
    }
}

#[derive(Debug, Clone)]
pub enum ThumbSlot {
    Loading,
    Ready(Thumb),
    Failed(String),
}

#[derive(Debug, Default)]
pub struct ThumbCache {
    slots: HashMap<ThumbKey, ThumbSlot>,
    order: VecDeque<ThumbKey>,
    /// Thumbnails that could not be decoded.
    unreadable: usize,
}

impl ThumbCache {
    pub fn get(&self, key: &ThumbKey) -> Option<&ThumbSlot> {
        self.slots.get(key)
    }

    /// Thumbnails that could not be decoded.
    pub fn unreadable(&self) -> usize {
        self.unreadable
    }

    /// Notes the thumbnails a frame wanted; returns those to load (not asked yet).
    pub fn want(&mut self, keys: Vec<ThumbKey>) -> Vec<ThumbKey> {
        let mut load = Vec::new();
        for key in keys {
            if !self.slots.contains_key(&key) {
                self.slots.insert(key.clone(), ThumbSlot::Loading);
                self.order.push_back(key.clone());
                load.push(key);
            }
        }
        while self.order.len() > THUMB_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.slots.remove(&old);
            }
        }
        load
    }

    /// A decoded (or unreadable) thumbnail; dropped if it left the cache meanwhile.
    pub fn arrived(&mut self, key: ThumbKey, result: Result<Thumb, String>) {
        if self.slots.contains_key(&key) {
            let slot = match result {
                Ok(t) => ThumbSlot::Ready(t),
                Err(e) => {
                    self.unreadable += 1;
                    ThumbSlot::Failed(e)
                }
            };
            self.slots.insert(key, slot);
        }
    }
}
