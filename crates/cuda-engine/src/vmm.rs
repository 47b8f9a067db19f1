//! Virtual memory management: physical memory made with `cuMemCreate` (on a device or on the
//! host), address space reserved with `cuMemAddressReserve`, the two joined with `cuMemMap`
//! and opened to devices with `cuMemSetAccess`; and [`Reservation`], one reservation cut into
//! equal slots, each of which may hold a mapping.

use std::fmt;

use cudarc::driver::sys as cu;

use crate::driver::Cuda;
use crate::error::{Error, Result};
use crate::Device;

/// A physical allocation handle (`CUmemGenericAllocationHandle`).
pub type Handle = u64;

/// `CU_MEM_ALLOC_GRANULARITY_MINIMUM`.
const GRANULARITY_MINIMUM: std::ffi::c_uint = 0;

/// Where `cuMemCreate` puts physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// On this device (`CU_MEM_LOCATION_TYPE_DEVICE`).
    Device(Device),
    /// In host memory (`CU_MEM_LOCATION_TYPE_HOST`, CUDA 12.2+).
    Host,
    /// In host memory of this NUMA node (`CU_MEM_LOCATION_TYPE_HOST_NUMA`).
    HostNuma(i32),
}

impl Location {
    /// The allocation property for this location: pinned, no shareable handle.
    pub fn prop(self) -> cu::CUmemAllocationProp {
        let (type_, id) = match self {
            Location::Device(device) => (cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, device),
            Location::Host => (cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST, 0),
            Location::HostNuma(node) => (cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA, node),
        };
        cu::CUmemAllocationProp {
            type_: cu::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
            requestedHandleTypes: cu::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE,
            location: cu::CUmemLocation { type_, id },
            win32HandleMetaData: std::ptr::null_mut(),
            allocFlags: cu::CUmemAllocationProp_st__bindgen_ty_1 {
                compressionType: 0,
                gpuDirectRDMACapable: 0,
                usage: 0,
                reserved: [0; 4],
            },
        }
    }
}

/// `DEVICE`, `HOST`, `HOST_NUMA 0`: as the messages name a location.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Device(_) => f.write_str("DEVICE"),
            Location::Host => f.write_str("HOST"),
            Location::HostNuma(node) => write!(f, "HOST_NUMA {node}"),
        }
    }
}

impl Cuda {
    /// `cuMemGetAllocationGranularity` (minimum) for memory at `location`; a granularity of 0
    /// is an error.
    pub fn granularity(&self, location: Location) -> Result<usize> {
        let (prop, mut g) = (location.prop(), 0usize);
        // SAFETY: out-pointer to a local and a valid property.
        self.call(self.t.mem_get_allocation_granularity, |f| unsafe { f(&mut g, &prop, GRANULARITY_MINIMUM) })?;
        if g == 0 {
            return Err(Error::Unexpected("cuMemGetAllocationGranularity returned 0".into()));
        }
        Ok(g)
    }

    /// `cuMemCreate`: `size` bytes of physical memory at `location`. The error names the
    /// location: `cuMemCreate(location HOST) failed with ...`.
    pub fn mem_create(&self, size: usize, location: Location) -> Result<Handle> {
        let (prop, mut handle) = (location.prop(), 0);
        let f = self.t.mem_create.get()?;
        // SAFETY: out-pointer to a local and a valid property.
        self.check(unsafe { f(&mut handle, size, &prop, 0) }, format!("cuMemCreate(location {location})"))?;
        Ok(handle)
    }

    /// `cuMemRelease`.
    pub fn mem_release(&self, handle: Handle) -> Result<()> {
        // SAFETY: the driver checks the handle.
        self.call(self.t.mem_release, |f| unsafe { f(handle) })
    }

    /// `cuMemAddressReserve`: `size` bytes of address space (`alignment` 0: the driver's).
    pub fn mem_address_reserve(&self, size: usize, alignment: usize) -> Result<u64> {
        let mut base = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.mem_address_reserve, |f| unsafe { f(&mut base, size, alignment, 0, 0) })?;
        Ok(base)
    }

    /// `cuMemAddressFree`.
    pub fn mem_address_free(&self, base: u64, size: usize) -> Result<()> {
        // SAFETY: the driver checks the range.
        self.call(self.t.mem_address_free, |f| unsafe { f(base, size) })
    }

    /// `cuMemMap`: `handle`'s memory at `address` (inside a reservation), no access yet.
    pub fn mem_map(&self, address: u64, size: usize, handle: Handle) -> Result<()> {
        // SAFETY: the driver checks the range and the handle.
        self.call(self.t.mem_map, |f| unsafe { f(address, size, 0, handle, 0) })
    }

    /// `cuMemUnmap`.
    pub fn mem_unmap(&self, address: u64, size: usize) -> Result<()> {
        // SAFETY: the driver checks the range.
        self.call(self.t.mem_unmap, |f| unsafe { f(address, size) })
    }

    /// `cuMemSetAccess`: read/write access to `[address, address + size)` for each of
    /// `devices`, in one call.
    pub fn mem_set_access(&self, address: u64, size: usize, devices: &[Device]) -> Result<()> {
        let access: Vec<cu::CUmemAccessDesc> = devices
            .iter()
            .map(|&id| cu::CUmemAccessDesc {
                location: cu::CUmemLocation { type_: cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id },
                flags: cu::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            })
            .collect();
        // SAFETY: the descriptors and their count.
        self.call(self.t.mem_set_access, |f| unsafe { f(address, size, access.as_ptr(), access.len()) })
    }
}

/// One address reservation of `slots` equal chunks, each of which may hold one mapping.
/// Dropping it unmaps and releases every mapping and frees the address space.
pub struct Reservation<'a> {
    cuda: &'a Cuda,
    device: Device,
    base: u64,
    chunk: usize,
    handles: Vec<Option<Handle>>,
}

impl<'a> Reservation<'a> {
    /// Reserves `slots` chunks of `chunk` bytes (a multiple of the granularity of whatever
    /// will be mapped), aligned to `alignment` (0: the driver's choice). `device` is the
    /// engine's: [`Reservation::map`] gives it access.
    pub fn reserve(cuda: &'a Cuda, device: Device, chunk: usize, slots: usize, alignment: usize) -> Result<Reservation<'a>> {
        let base = cuda.mem_address_reserve(chunk * slots, alignment)?;
        Ok(Reservation { cuda, device, base, chunk, handles: vec![None; slots] })
    }

    /// The address of `slot`.
    pub fn addr(&self, slot: usize) -> u64 {
        self.base + (slot * self.chunk) as u64
    }

    /// The size of a slot.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The engine's device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The driver table it uses.
    pub fn cuda(&self) -> &'a Cuda {
        self.cuda
    }

    /// Creates one chunk of physical memory at `location` (not yet mapped).
    pub fn create(&self, location: Location) -> Result<Handle> {
        self.cuda.mem_create(self.chunk, location)
    }

    /// Maps `handle` at `slot` and gives the engine's device read/write access. Takes the
    /// handle (released if mapping fails).
    pub fn map(&mut self, slot: usize, handle: Handle) -> Result<()> {
        self.map_only(slot, handle)?;
        self.set_access(slot, &[self.device])
    }

    /// Maps `handle` at `slot`, giving no access yet. Takes the handle (released if mapping
    /// fails).
    pub fn map_only(&mut self, slot: usize, handle: Handle) -> Result<()> {
        if let Err(e) = self.cuda.mem_map(self.addr(slot), self.chunk, handle) {
            let _ = self.cuda.mem_release(handle);
            return Err(e);
        }
        self.handles[slot] = Some(handle);
        Ok(())
    }

    /// Gives each of `devices` read/write access to the mapping at `slot`, in one call.
    pub fn set_access(&self, slot: usize, devices: &[Device]) -> Result<()> {
        self.cuda.mem_set_access(self.addr(slot), self.chunk, devices)
    }

    /// Device memory of the engine's device, mapped at `slot` with access.
    pub fn map_device(&mut self, slot: usize) -> Result<()> {
        let handle = self.create(Location::Device(self.device))?;
        self.map(slot, handle)
    }

    /// Unmaps `slot` and releases its memory (nothing if the slot holds no mapping).
    pub fn unmap(&mut self, slot: usize) -> Result<()> {
        if let Some(handle) = self.handles[slot].take() {
            self.cuda.mem_unmap(self.addr(slot), self.chunk)?;
            self.cuda.mem_release(handle)?;
        }
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        for slot in 0..self.handles.len() {
            let _ = self.unmap(slot);
        }
        let _ = self.cuda.mem_address_free(self.base, self.chunk * self.handles.len());
    }
}
