//! The driver's own answer about an address: `cuPointerGetAttributes` with the eight
//! attributes the library asks, and `cuPointerGetAttribute` for one.

use std::ffi::{c_int, c_void};

use crate::driver::Cuda;
use crate::error::Result;

/// `CU_POINTER_ATTRIBUTE_MEMORY_TYPE`.
pub const ATTR_MEMORY_TYPE: c_int = 2;
/// `CU_POINTER_ATTRIBUTE_BUFFER_ID`.
pub const ATTR_BUFFER_ID: c_int = 7;
/// `CU_POINTER_ATTRIBUTE_IS_MANAGED`.
pub const ATTR_IS_MANAGED: c_int = 8;
/// `CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL`.
pub const ATTR_DEVICE_ORDINAL: c_int = 9;
/// `CU_POINTER_ATTRIBUTE_RANGE_START_ADDR`.
pub const ATTR_RANGE_START_ADDR: c_int = 11;
/// `CU_POINTER_ATTRIBUTE_RANGE_SIZE`.
pub const ATTR_RANGE_SIZE: c_int = 12;
/// `CU_POINTER_ATTRIBUTE_MAPPING_SIZE`.
pub const ATTR_MAPPING_SIZE: c_int = 18;
/// `CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR`.
pub const ATTR_MAPPING_BASE_ADDR: c_int = 19;

/// The eight attributes the library asks about an address, in its order, as the driver wrote
/// them (each in its C type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointerAttributes {
    /// MEMORY_TYPE: 0 unregistered, 1 host, 2 device.
    pub memory_type: u32,
    /// IS_MANAGED.
    pub is_managed: u32,
    /// DEVICE_ORDINAL (-2 where the driver wrote nothing).
    pub device_ordinal: i32,
    /// BUFFER_ID.
    pub buffer_id: u64,
    /// RANGE_START_ADDR.
    pub range_start: u64,
    /// RANGE_SIZE.
    pub range_size: usize,
    /// MAPPING_SIZE.
    pub mapping_size: usize,
    /// MAPPING_BASE_ADDR.
    pub mapping_base: u64,
}

impl Default for PointerAttributes {
    fn default() -> PointerAttributes {
        PointerAttributes {
            memory_type: 0,
            is_managed: 0,
            device_ordinal: -2,
            buffer_id: 0,
            range_start: 0,
            range_size: 0,
            mapping_size: 0,
            mapping_base: 0,
        }
    }
}

impl Cuda {
    /// `cuPointerGetAttributes` with the library's eight attributes, asked directly, in one
    /// call: the same question the monitor asks, without the monitor.
    #[inline]
    pub fn pointer_attributes(&self, address: u64) -> Result<PointerAttributes> {
        let mut a = PointerAttributes::default();
        let mut attributes = [
            ATTR_MEMORY_TYPE,
            ATTR_IS_MANAGED,
            ATTR_DEVICE_ORDINAL,
            ATTR_BUFFER_ID,
            ATTR_RANGE_START_ADDR,
            ATTR_RANGE_SIZE,
            ATTR_MAPPING_SIZE,
            ATTR_MAPPING_BASE_ADDR,
        ];
        let mut data: [*mut c_void; 8] = [
            (&mut a.memory_type as *mut u32).cast(),
            (&mut a.is_managed as *mut u32).cast(),
            (&mut a.device_ordinal as *mut i32).cast(),
            (&mut a.buffer_id as *mut u64).cast(),
            (&mut a.range_start as *mut u64).cast(),
            (&mut a.range_size as *mut usize).cast(),
            (&mut a.mapping_size as *mut usize).cast(),
            (&mut a.mapping_base as *mut u64).cast(),
        ];
        // SAFETY: each slot points at a live field of the attribute's C type.
        self.call(self.t.pointer_get_attributes, |f| unsafe {
            f(8, attributes.as_mut_ptr(), data.as_mut_ptr(), address)
        })?;
        Ok(a)
    }

    /// `cuPointerGetAttribute` for one attribute whose value is 8 bytes (an address or a
    /// size, such as [`ATTR_MAPPING_SIZE`] or [`ATTR_MAPPING_BASE_ADDR`]).
    pub fn pointer_attribute_u64(&self, attribute: c_int, address: u64) -> Result<u64> {
        let mut value = 0u64;
        // SAFETY: an 8-byte local for an 8-byte attribute.
        self.call(self.t.pointer_get_attribute, |f| unsafe { f((&mut value as *mut u64).cast(), attribute, address) })?;
        Ok(value)
    }
}
