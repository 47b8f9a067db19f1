//! Devices: how many, their handles, names, memory and attributes.

use std::ffi::{c_char, c_int, CStr};

use crate::driver::Cuda;
use crate::error::Result;
use crate::Device;

/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR`.
const COMPUTE_CAPABILITY_MAJOR: c_int = 75;
/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR`.
const COMPUTE_CAPABILITY_MINOR: c_int = 76;

impl Cuda {
    /// `cuDeviceGetCount`.
    pub fn device_count(&self) -> Result<c_int> {
        let mut count = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.device_get_count, |f| unsafe { f(&mut count) })?;
        Ok(count)
    }

    /// `cuDeviceGet`: the handle of the device with this ordinal.
    pub fn device(&self, ordinal: c_int) -> Result<Device> {
        let mut device = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.device_get, |f| unsafe { f(&mut device, ordinal) })?;
        Ok(device)
    }

    /// `cuDeviceGetName`.
    pub fn device_name(&self, device: Device) -> Result<String> {
        let mut name = [0 as c_char; 256];
        // SAFETY: the buffer and its length; the driver NUL-terminates.
        self.call(self.t.device_get_name, |f| unsafe { f(name.as_mut_ptr(), name.len() as c_int, device) })?;
        // SAFETY: NUL-terminated by the driver (and the buffer was zeroed).
        Ok(unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// `cuDeviceTotalMem_v2`: the device's memory in bytes.
    pub fn device_total_mem(&self, device: Device) -> Result<usize> {
        let mut bytes = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.device_total_mem, |f| unsafe { f(&mut bytes, device) })?;
        Ok(bytes)
    }

    /// `cuDeviceGetAttribute`.
    pub fn device_attribute(&self, attribute: c_int, device: Device) -> Result<c_int> {
        let mut value = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.device_get_attribute, |f| unsafe { f(&mut value, attribute, device) })?;
        Ok(value)
    }

    /// The compute capability as one number, 90 for 9.0 (a failed query reads as 0).
    pub fn compute_capability(&self, device: Device) -> c_int {
        let major = self.device_attribute(COMPUTE_CAPABILITY_MAJOR, device).unwrap_or(0);
        let minor = self.device_attribute(COMPUTE_CAPABILITY_MINOR, device).unwrap_or(0);
        major * 10 + minor
    }

    /// `cuDeviceCanAccessPeer(device, peer)`.
    pub fn can_access_peer(&self, device: Device, peer: Device) -> Result<bool> {
        let mut can = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.device_can_access_peer, |f| unsafe { f(&mut can, device, peer) })?;
        Ok(can != 0)
    }
}
