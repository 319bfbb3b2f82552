//! `train.device`: "auto" | "cpu" | "cuda:N". Nothing else in vitrine assumes a device.

use candle_core::Device;

pub use crate::config::{DeviceChoice, parse_device};

/// The device to run on; `auto` takes CUDA device 0 when vitrine was built with the
/// `cuda` feature and a GPU answers, the CPU otherwise.
pub fn select(choice: DeviceChoice) -> candle_core::Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        // Candle's own message names Candle, not what to do.
        DeviceChoice::Cuda(n) if !cfg!(feature = "cuda") => Err(candle_core::Error::Msg(format!(
            "cuda:{n} asked for, but this vitrine was built without GPU support: rebuild it with `cargo build --release --features cuda` (see README's GPU section), or use --device cpu"
        ))),
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
        }
    }
}
