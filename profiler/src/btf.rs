//! Field offsets of kernel structs from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for the
//! few places a probe reads kernel memory directly. aya-ebpf has no CO-RE relocations for Rust
//! programs, so the offsets are found here and passed in as globals. Parsed with `btf-rs`:
//! aya-obj parses BTF too, but keeps struct members private.

use std::path::Path;

use btf_rs::{Type, Union};

/// Where the running kernel's BTF is.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF from {path}: {source}")]
    Read { path: String, source: btf_rs::Error },
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no field {field} in the kernel's BTF")]
    NoField { strukt: String, field: String },
}

/// A parsed BTF file.
pub struct Btf {
    btf: btf_rs::Btf,
}

impl Btf {
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        let btf = btf_rs::Btf::from_file(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { btf })
    }

    /// Byte offset of `field` in `struct strukt`, looking into anonymous structs and unions.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let found = self
            .btf
            .resolve_types_by_name(strukt)
            .unwrap_or_default()
            .into_iter()
            .find_map(|ty| match ty {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        self.find_member(&found, field, 0, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.into(),
                field: field.into(),
            })
    }

    /// The bit offset of `field` in a struct or union, through anonymous members.
    fn find_member(&self, ty: &Union, field: &str, base_bits: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for member in &ty.members {
            let bits = base_bits + member.bit_offset();
            match self.btf.resolve_name(member) {
                Ok(name) if !name.is_empty() => {
                    if name == field {
                        return Some(bits);
                    }
                }
                _ => {
                    let inner = self.resolve(self.btf.resolve_chained_type(member).ok()?)?;
                    if let Some(found) = self.find_member(&inner, field, bits, depth + 1) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to a struct or union.
    fn resolve(&self, mut ty: Type) -> Option<Union> {
        for _ in 0..32 {
            ty = match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Volatile(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Const(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Restrict(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(&t).ok()?,
                _ => return None,
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_btf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, b"not btf at all, not even close").unwrap();
        assert!(matches!(Btf::load(&path), Err(BtfError::Read { .. })));
    }

    /// Against this machine's kernel, where the layout is known: `skc_num` sits after
    /// `skc_addrpair` (8), `skc_hash` (4) and `skc_dport` (2), inside two anonymous unions.
    #[test]
    fn finds_fields_inside_anonymous_members() {
        let Ok(btf) = Btf::load(Path::new(VMLINUX)) else {
            eprintln!("skipping: no kernel BTF");
            return;
        };
        assert_eq!(btf.field_offset("sock_common", "skc_num").unwrap(), 14);
        assert_eq!(btf.field_offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.field_offset("sock_common", "skc_family").unwrap(), 16);
        assert!(matches!(
            btf.field_offset("sock_common", "no_such_field"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }
}
