//! `train.device`: "auto" | "cpu" | "cuda:N". Nothing else in vitrine assumes a device.

use candle_core::Device;

pub use crate::config::{DeviceChoice, parse_device};

/// The device to run on; `auto` takes CUDA device 0 when vitrine was built with the
/// `cuda` feature and a GPU answers, the CPU otherwise.
pub fn select(choice: DeviceChoice) -> candle_core::Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => Device::new_cuda(n),
        DeviceChoice::Auto => Device::cuda_if_available(0),
    }
}

/// "cpu" or "cuda:N" for logs and events.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
