//! Field offsets of kernel structs from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for the
//! few places a probe reads kernel memory directly. aya-ebpf has no CO-RE relocations for Rust
//! programs, so the offsets are found here and passed in as globals.
//!
//! Only what that needs is parsed: the type and string sections, and struct/union members.

use std::path::Path;

/// Where the running kernel's BTF is.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not BTF, or truncated")]
    Malformed(String),
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no field {field} in the kernel's BTF")]
    NoField { strukt: String, field: String },
}

const MAGIC: u16 = 0xeb9f;

mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// The referenced type, for modifiers and typedefs.
    ty: u32,
    members: Vec<Member>,
}

/// The types of one BTF blob, indexed by type id (id 0 is `void`).
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data).ok_or_else(|| BtfError::Malformed(path.display().to_string()))
    }

    /// Little-endian BTF, as on every target this profiler supports.
    pub fn parse(data: &[u8]) -> Option<Self> {
        if u16::from_le_bytes(data.get(0..2)?.try_into().ok()?) != MAGIC {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_data = data.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)?
            .to_vec();
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let ty = u32_at(types_data, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let mut members = Vec::new();
            at += match kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(types_data, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_data, m)?,
                            ty: u32_at(types_data, m + 4)?,
                            bit_offset: if kflag { offset & 0xff_ffff } else { offset },
                        });
                    }
                    vlen * 12
                }
                kind::ENUM | kind::FUNC_PROTO => vlen * 8,
                kind::DATASEC | kind::ENUM64 => vlen * 12,
                _ => 0,
            };
            types.push(Type {
                name,
                kind,
                ty,
                members,
            });
        }
        Some(Self { types, strings })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.ty
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `field` in `struct strukt`, looking into anonymous structs and unions.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let ty = self
            .types
            .iter()
            .find(|t| t.kind == kind::STRUCT && self.name(t.name) == strukt.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        self.find_member(ty, field.as_bytes(), 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.into(),
                field: field.into(),
            })
    }

    fn find_member(&self, ty: &Type, field: &[u8], base_bits: u32) -> Option<u32> {
        for member in &ty.members {
            let bits = base_bits + member.bit_offset;
            if member.name != 0 {
                if self.name(member.name) == field {
                    return Some(bits);
                }
                continue;
            }
            let inner = self.resolve(member.ty)?;
            if matches!(inner.kind, kind::STRUCT | kind::UNION)
                && let Some(found) = self.find_member(inner, field, bits)
            {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"not btf at all, not even close").is_none());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0]).is_none());
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
