//! The boot loaders DHCP hands out, copied into the rendered TFTP tree from
//! the boot server's own packages, so that the tree is complete: with
//! `loader = "ipxe"`, Debian's `ipxe` package (`undionly.kpxe` chains from a
//! BIOS PXE ROM, `ipxe.efi` boots UEFI clients). Clients whose network ROM
//! is iPXE already (QEMU's, many NICs flashed with it) skip them and fetch
//! `ipxe/boot.ipxe` directly (dhcp-userclass iPXE).

use super::Ctx;
use crate::desc::Loader;

/// Where Debian's `ipxe` package installs its binaries.
pub const IPXE_DIR: &str = "/usr/lib/ipxe";

/// (path under the TFTP root, bytes) of each loader binary; Err is a note
/// for the admin naming what is missing.
pub fn files(c: &Ctx) -> Result<Vec<(String, Vec<u8>)>, String> {
    let b = &c.d.boot;
    match b.loader {
        Loader::Ipxe => {
            let mut v = Vec::new();
            for (dst, src) in [(&b.ipxe_bios, "undionly.kpxe"), (&b.ipxe_efi, "ipxe.efi")] {
                let path = std::path::Path::new(IPXE_DIR).join(src);
                let bytes = std::fs::read(&path).map_err(|e| {
                    format!(
                        "iPXE loaders not copied: {} ({e}); install Debian's ipxe package, or place {} and {} in the TFTP root yourself",
                        path.display(),
                        b.ipxe_bios,
                        b.ipxe_efi
                    )
                })?;
                v.push((dst.clone(), bytes));
            }
            Ok(v)
        }
        Loader::Grub => Err(format!(
            "GRUB loaders not copied: make them with `grub-mknetdir --net-directory=<out>/tftp --subdir=grub` (grub-pc-bin, grub-efi-amd64-bin) so that {} and {} exist",
            b.grub_bios, b.grub_efi
        )),
    }
}
