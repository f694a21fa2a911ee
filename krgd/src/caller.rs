//! Who sent a request on the admin socket. The listener reads it once per
//! connection (SO_PEERCRED); every service authorises each request by it.

/// Who sent an admin request, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Caller {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}
