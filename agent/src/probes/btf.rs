//! A small, self-contained reader for the kernel's BTF type information.
//!
//! Rust eBPF programs cannot emit CO-RE relocations, so the agent resolves the
//! kernel struct member offsets it needs in userspace, from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`), and hands them to the eBPF
//! programs as globals.
//!
//! Only what that needs is implemented: parsing the type and string sections
//! (every bound is checked; garbage input yields an error, never a panic),
//! member offsets through embedded and anonymous members, enum values, typedef
//! existence and struct sizes. The format is described in the kernel's
//! `Documentation/bpf/btf.rst`. Only BTF in the host's byte order is accepted.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

const BTF_MAGIC: u16 = 0xEB9F;
const BTF_VERSION: u8 = 1;
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`.
const TYPE_HEADER_LEN: usize = 12;
/// Size of `struct btf_member` (and of `btf_array`, `btf_enum64`, `btf_var_secinfo`).
const MEMBER_LEN: usize = 12;

/// Longest chain of typedef/const/volatile/restrict/type_tag (or nested arrays,
/// or nested anonymous members) followed before giving up; real kernels need a handful.
const MAX_DEPTH: u32 = 64;
/// Most composite types visited while searching one member through anonymous
/// members; keeps crafted input (a wide DAG of anonymous members) from taking forever.
const MAX_ANON_VISITS: u32 = 100_000;
/// Size of a pointer on the (64-bit) kernels we support; BTF does not record it.
const POINTER_SIZE: u64 = 8;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Errors from reading BTF or looking things up in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("failed to read BTF from {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not BTF data: magic is {found:#06x}, expected 0xeb9f")]
    BadMagic { found: u16 },
    #[error("BTF data is in the other byte order; cross-endian BTF is not supported")]
    CrossEndian,
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("BTF has no type named `{name}`")]
    TypeNotFound { name: String },
    #[error("`{name}` is a {kind}, not a struct or union")]
    NotAStruct { name: String, kind: &'static str },
    #[error("`{name}` is a {kind}, not an enum")]
    NotAnEnum { name: String, kind: &'static str },
    #[error("`{ty}` has no member `{member}`")]
    MemberNotFound { ty: String, member: String },
    #[error("`{ty}.{member}` is a bitfield; it has no byte offset")]
    Bitfield { ty: String, member: String },
    #[error("`{name}` has no size: its type is a {kind}")]
    Unsized { name: String, kind: &'static str },
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

/// Location of a struct member, as found by [`Btf::member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Bytes from the start of the outer struct.
    pub offset: u32,
    /// Size of the member in bytes, after resolving typedef/const/volatile/
    /// restrict/type_tag: a pointer is 8, an array is element size times count.
    pub size: u32,
}

/// One `struct btf_type`, plus where its kind-specific data starts.
#[derive(Debug, Clone, Copy)]
struct RawType {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Offset of the kind-specific data in `Btf::type_data`.
    data: usize,
}

impl RawType {
    fn kind(&self) -> u8 {
        ((self.info >> 24) & 0x1f) as u8
    }

    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info & (1 << 31) != 0
    }
}

/// A member found by the recursive search, relative to the struct searched.
#[derive(Debug, Clone, Copy)]
struct Found {
    bit_offset: u64,
    bitfield_size: u32,
    ty: u32,
}

/// Parsed BTF: the types, the string section and a name index.
pub struct Btf {
    /// `types[i]` is type id `i + 1` (id 0 is void).
    types: Vec<RawType>,
    type_data: Vec<u8>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .field("names", &self.by_name.len())
            .field("string_bytes", &self.strings.len())
            .finish()
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let b = bytes.get(at..end)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        0 => "void",
        KIND_INT => "int",
        KIND_PTR => "pointer",
        KIND_ARRAY => "array",
        KIND_STRUCT => "struct",
        KIND_UNION => "union",
        KIND_ENUM => "enum",
        KIND_FWD => "forward declaration",
        KIND_TYPEDEF => "typedef",
        KIND_VOLATILE => "volatile",
        KIND_CONST => "const",
        KIND_RESTRICT => "restrict",
        KIND_FUNC => "function",
        KIND_FUNC_PROTO => "function prototype",
        KIND_VAR => "variable",
        KIND_DATASEC => "data section",
        KIND_FLOAT => "float",
        KIND_DECL_TAG => "decl tag",
        KIND_TYPE_TAG => "type tag",
        KIND_ENUM64 => "enum64",
        _ => "unknown kind",
    }
}

fn is_composite(kind: u8) -> bool {
    kind == KIND_STRUCT || kind == KIND_UNION
}

fn is_enum(kind: u8) -> bool {
    kind == KIND_ENUM || kind == KIND_ENUM64
}

fn is_modifier(kind: u8) -> bool {
    matches!(
        kind,
        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
    )
}

impl Btf {
    /// Where the running kernel exposes its own BTF.
    pub const VMLINUX: &'static str = "/sys/kernel/btf/vmlinux";

    /// Reads and parses a BTF file, usually [`Btf::VMLINUX`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses raw BTF (header, type section, string section). Every bound is
    /// validated; malformed input is an error, never a panic.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let magic = match bytes.get(0..2) {
            Some(&[a, b]) => u16::from_ne_bytes([a, b]),
            _ => return Err(malformed("input is shorter than the BTF magic")),
        };
        if magic == BTF_MAGIC.swap_bytes() {
            return Err(BtfError::CrossEndian);
        }
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic { found: magic });
        }
        if bytes.len() < HEADER_LEN {
            return Err(malformed(format!(
                "input is {} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let version = bytes.get(2).copied().unwrap_or_default();
        if version != BTF_VERSION {
            return Err(malformed(format!("unsupported BTF version {version}")));
        }
        let header = |at: usize| read_u32(bytes, at).map(|v| v as usize).unwrap_or_default();
        let hdr_len = header(4);
        let (type_off, type_len) = (header(8), header(12));
        let (str_off, str_len) = (header(16), header(20));
        if hdr_len < HEADER_LEN || hdr_len > bytes.len() {
            return Err(malformed(format!(
                "header length {hdr_len} is out of range (input is {} bytes)",
                bytes.len()
            )));
        }
        let section = |what: &str, off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|range| bytes.get(range))
                .ok_or_else(|| {
                    malformed(format!(
                        "{what} section (offset {off}, length {len}) lies outside the {} input bytes",
                        bytes.len()
                    ))
                })
        };
        let type_data = section("type", type_off, type_len)?;
        let strings = section("string", str_off, str_len)?;

        let mut types = Vec::new();
        let mut pos = 0usize;
        while pos < type_data.len() {
            let id = types.len() + 1;
            let field = |i: usize| read_u32(type_data, pos + 4 * i);
            let (Some(name_off), Some(info), Some(size_or_type)) = (field(0), field(1), field(2))
            else {
                return Err(malformed(format!(
                    "type id {id} header is truncated at the end of the type section"
                )));
            };
            let raw = RawType {
                name_off,
                info,
                size_or_type,
                data: pos + TYPE_HEADER_LEN,
            };
            let vlen = raw.vlen();
            let extra = match raw.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => MEMBER_LEN * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => {
                    return Err(malformed(format!(
                        "type id {id} has unknown kind {other} (at byte {pos} of the type section)"
                    )));
                }
            };
            let end = raw
                .data
                .checked_add(extra)
                .filter(|&end| end <= type_data.len())
                .ok_or_else(|| {
                    malformed(format!(
                        "type id {id} ({}) runs past the end of the type section",
                        kind_name(raw.kind())
                    ))
                })?;
            types.push(raw);
            pos = end;
        }
        if u32::try_from(types.len()).is_err() {
            return Err(malformed("too many types"));
        }

        let mut btf = Btf {
            types,
            type_data: type_data.to_vec(),
            strings: strings.to_vec(),
            by_name: HashMap::new(),
        };
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, t) in (1u32..).zip(&btf.types) {
            if t.name_off == 0 {
                continue;
            }
            let name = btf.str_at(t.name_off)?;
            if name.is_empty() {
                continue;
            }
            by_name.entry(name.to_owned()).or_default().push(id);
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    /// Offset and size of `path` inside the struct or union named `ty`, e.g.
    /// `member("task_struct", "cgroups")` or `member("sock", "__sk_common.skc_family")`.
    ///
    /// Path segments are separated by `.` and walk through embedded members
    /// only (struct/union values; a pointer segment before the last one is an
    /// error). Anonymous struct/union members are searched transparently,
    /// adding their offsets. A bitfield member is [`BtfError::Bitfield`].
    pub fn member(&self, ty: &str, path: &str) -> Result<Member, BtfError> {
        let mut container = self.find_named(ty, is_composite, |name, kind| {
            BtfError::NotAStruct { name, kind }
        })?;
        let segments: Vec<&str> = path.split('.').collect();
        let mut bit_offset: u64 = 0;
        let mut prefix_end = 0usize;
        for (i, segment) in segments.iter().enumerate() {
            prefix_end += segment.len() + usize::from(i > 0);
            let prefix = path.get(..prefix_end).unwrap_or(path);
            let not_found = || BtfError::MemberNotFound {
                ty: ty.to_owned(),
                member: prefix.to_owned(),
            };
            if segment.is_empty() {
                return Err(not_found());
            }
            let mut budget = MAX_ANON_VISITS;
            let found = self
                .find_member(container, segment.as_bytes(), 0, &mut budget)?
                .ok_or_else(not_found)?;
            bit_offset = bit_offset
                .checked_add(found.bit_offset)
                .ok_or_else(|| malformed("member offset overflows"))?;
            let resolved = self.strip_modifiers(found.ty)?;
            let kind = self.kind_of(resolved)?;

            if i + 1 < segments.len() {
                if !is_composite(kind) {
                    return Err(BtfError::NotAStruct {
                        name: format!("{ty}.{prefix}"),
                        kind: kind_name(kind),
                    });
                }
                container = resolved;
                continue;
            }

            if found.bitfield_size != 0
                || !bit_offset.is_multiple_of(8)
                || self.is_int_bitfield(resolved)?
            {
                return Err(BtfError::Bitfield {
                    ty: ty.to_owned(),
                    member: path.to_owned(),
                });
            }
            let size = self
                .byte_size(resolved, 0)
                .map_err(|e| match e {
                    BtfError::Unsized { kind, .. } => BtfError::Unsized {
                        name: format!("{ty}.{path}"),
                        kind,
                    },
                    other => other,
                })
                .and_then(|s| {
                    u32::try_from(s)
                        .map_err(|_| malformed(format!("size of {ty}.{path} overflows")))
                })?;
            let offset = u32::try_from(bit_offset / 8)
                .map_err(|_| malformed(format!("offset of {ty}.{path} overflows")))?;
            return Ok(Member { offset, size });
        }
        // `split` always yields at least one segment, and the last one returns above.
        Err(BtfError::MemberNotFound {
            ty: ty.to_owned(),
            member: path.to_owned(),
        })
    }

    /// Values of the enum (ENUM or ENUM64) named `name`, in declaration order.
    ///
    /// Unsigned 64-bit values above `i64::MAX` wrap to negative numbers.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let id = self.find_named(name, is_enum, |name, kind| BtfError::NotAnEnum {
            name,
            kind,
        })?;
        let t = self.ty(id)?;
        let signed = t.kind_flag();
        let mut values = Vec::with_capacity(t.vlen());
        for i in 0..t.vlen() {
            let (entry_len, base) = match t.kind() {
                KIND_ENUM64 => (MEMBER_LEN, t.data + MEMBER_LEN * i),
                _ => (8, t.data + 8 * i),
            };
            let name_off = self.data_u32(base)?;
            let lo = self.data_u32(base + 4)?;
            let value = if entry_len == 8 {
                if signed {
                    i64::from(lo as i32)
                } else {
                    i64::from(lo)
                }
            } else {
                let hi = self.data_u32(base + 8)?;
                ((u64::from(hi) << 32) | u64::from(lo)) as i64
            };
            values.push((self.str_at(name_off)?.to_owned(), value));
        }
        Ok(values)
    }

    /// Whether a typedef with this name exists; e.g. `btf_trace_<name>` tells
    /// whether the kernel has a BTF tracepoint (`tp_btf`) of that name.
    pub fn has_typedef(&self, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|ids| {
            ids.iter()
                .any(|&id| self.ty(id).is_ok_and(|t| t.kind() == KIND_TYPEDEF))
        })
    }

    /// Size in bytes of the struct or union named `name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        let id = self.find_named(name, is_composite, |name, kind| BtfError::NotAStruct {
            name,
            kind,
        })?;
        Ok(self.ty(id)?.size_or_type)
    }

    // ---- private helpers ----

    fn ty(&self, id: u32) -> Result<&RawType, BtfError> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or_else(|| {
                malformed(format!(
                    "reference to type id {id}, but there are only {} types",
                    self.types.len()
                ))
            })
    }

    /// Kind of a type id, with 0 for void.
    fn kind_of(&self, id: u32) -> Result<u8, BtfError> {
        if id == 0 {
            Ok(0)
        } else {
            Ok(self.ty(id)?.kind())
        }
    }

    fn data_u32(&self, at: usize) -> Result<u32, BtfError> {
        read_u32(&self.type_data, at)
            .ok_or_else(|| malformed(format!("read past the type section at byte {at}")))
    }

    /// The NUL-terminated string at `off` in the string section, as bytes.
    fn bytes_at(&self, off: u32) -> Result<&[u8], BtfError> {
        let rest = self
            .strings
            .get(off as usize..)
            .ok_or_else(|| malformed(format!("string offset {off} is past the string section")))?;
        match rest.iter().position(|&b| b == 0) {
            Some(end) => Ok(&rest[..end]),
            None if off == 0 => Ok(&[]),
            None => Err(malformed(format!(
                "string at offset {off} is not NUL-terminated"
            ))),
        }
    }

    fn str_at(&self, off: u32) -> Result<&str, BtfError> {
        std::str::from_utf8(self.bytes_at(off)?)
            .map_err(|_| malformed(format!("string at offset {off} is not UTF-8")))
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type id.
    fn strip_modifiers(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            if id == 0 {
                return Ok(0);
            }
            let t = self.ty(id)?;
            if !is_modifier(t.kind()) {
                return Ok(id);
            }
            id = t.size_or_type;
        }
        Err(malformed(format!(
            "typedef/modifier chain through type id {id} is cyclic or too deep"
        )))
    }

    /// The type named `name` whose kind satisfies `accept`: a definition with
    /// members/values first, then an empty one, then a typedef resolving to one.
    fn find_named(
        &self,
        name: &str,
        accept: fn(u8) -> bool,
        wrong_kind: fn(String, &'static str) -> BtfError,
    ) -> Result<u32, BtfError> {
        let ids = self
            .by_name
            .get(name)
            .ok_or_else(|| BtfError::TypeNotFound {
                name: name.to_owned(),
            })?;
        let mut empty = None;
        let mut first_kind = None;
        for &id in ids {
            let t = self.ty(id)?;
            if accept(t.kind()) {
                if t.vlen() > 0 {
                    return Ok(id);
                }
                empty.get_or_insert(id);
            }
            // Report the most telling kind: anything beats a forward declaration.
            if first_kind.is_none_or(|k| k == KIND_FWD) {
                first_kind = Some(t.kind());
            }
        }
        if let Some(id) = empty {
            return Ok(id);
        }
        for &id in ids {
            if self.ty(id)?.kind() == KIND_TYPEDEF {
                let target = self.strip_modifiers(id)?;
                if target != 0 && accept(self.kind_of(target)?) {
                    return Ok(target);
                }
            }
        }
        Err(wrong_kind(
            name.to_owned(),
            kind_name(first_kind.unwrap_or_default()),
        ))
    }

    /// Searches the members of struct/union `container` for `name`, descending
    /// into anonymous struct/union members. Offsets are relative to `container`.
    fn find_member(
        &self,
        container: u32,
        name: &[u8],
        depth: u32,
        budget: &mut u32,
    ) -> Result<Option<Found>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!(
                "anonymous members nested too deeply below type id {container}"
            )));
        }
        *budget = budget.checked_sub(1).ok_or_else(|| {
            malformed("too many anonymous members visited while searching a member")
        })?;
        let t = *self.ty(container)?;
        for i in 0..t.vlen() {
            let base = t.data + MEMBER_LEN * i;
            let name_off = self.data_u32(base)?;
            let ty = self.data_u32(base + 4)?;
            let raw_offset = self.data_u32(base + 8)?;
            let (bit_offset, bitfield_size) = if t.kind_flag() {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            let member_name = if name_off == 0 {
                &[][..]
            } else {
                self.bytes_at(name_off)?
            };
            if member_name.is_empty() {
                let inner = self.strip_modifiers(ty)?;
                if is_composite(self.kind_of(inner)?)
                    && let Some(mut found) = self.find_member(inner, name, depth + 1, budget)?
                {
                    found.bit_offset += u64::from(bit_offset);
                    return Ok(Some(found));
                }
            } else if member_name == name {
                return Ok(Some(Found {
                    bit_offset: u64::from(bit_offset),
                    bitfield_size,
                    ty,
                }));
            }
        }
        Ok(None)
    }

    /// Whether `id` is an INT whose encoding describes a bitfield (the
    /// pre-kind_flag way of encoding bitfield members).
    fn is_int_bitfield(&self, id: u32) -> Result<bool, BtfError> {
        if self.kind_of(id)? != KIND_INT {
            return Ok(false);
        }
        let t = self.ty(id)?;
        let encoding = self.data_u32(t.data)?;
        let bits = u64::from(encoding & 0xff);
        let bit_offset = (encoding >> 16) & 0xff;
        Ok(bit_offset != 0 || bits != u64::from(t.size_or_type) * 8)
    }

    /// Size in bytes of type `id` (modifiers resolved, pointers are 8).
    fn byte_size(&self, id: u32, depth: u32) -> Result<u64, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!(
                "array nesting below type id {id} is cyclic or too deep"
            )));
        }
        let id = self.strip_modifiers(id)?;
        let kind = self.kind_of(id)?;
        match kind {
            KIND_PTR => Ok(POINTER_SIZE),
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Ok(u64::from(self.ty(id)?.size_or_type))
            }
            KIND_ARRAY => {
                let t = self.ty(id)?;
                let elem = self.data_u32(t.data)?;
                let nelems = self.data_u32(t.data + 8)?;
                let elem_size = self.byte_size(elem, depth + 1)?;
                elem_size
                    .checked_mul(u64::from(nelems))
                    .ok_or_else(|| malformed(format!("size of array type id {id} overflows")))
            }
            _ => Err(BtfError::Unsized {
                name: String::new(),
                kind: kind_name(kind),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs by hand, in the host's byte order.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = u32::try_from(self.strings.len()).expect("test strings fit in u32");
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn raw(
            &mut self,
            name: &str,
            kind: u8,
            kind_flag: bool,
            vlen: usize,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.string(name);
            let vlen = u32::try_from(vlen).expect("test vlen fits in u32");
            let info = (u32::from(kind) << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            for word in [name_off, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&word.to_ne_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.raw(name, KIND_INT, false, 0, size, &[size * 8])
        }

        fn int_bits(&mut self, name: &str, size: u32, bit_offset: u32, bits: u32) -> u32 {
            self.raw(name, KIND_INT, false, 0, size, &[(bit_offset << 16) | bits])
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.raw("", KIND_PTR, false, 0, to, &[])
        }

        fn array(&mut self, elem: u32, index: u32, nelems: u32) -> u32 {
            self.raw("", KIND_ARRAY, false, 0, 0, &[elem, index, nelems])
        }

        fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.raw(name, KIND_TYPEDEF, false, 0, to, &[])
        }

        fn modifier(&mut self, kind: u8, to: u32) -> u32 {
            self.raw("", kind, false, 0, to, &[])
        }

        fn fwd(&mut self, name: &str) -> u32 {
            self.raw(name, KIND_FWD, false, 0, 0, &[])
        }

        /// Members are (name, type, offset word: bit offset, or with
        /// `kind_flag` bitfield_size << 24 | bit offset).
        fn composite(
            &mut self,
            kind: u8,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for &(m_name, ty, offset) in members {
                extra.extend([self.string(m_name), ty, offset]);
            }
            self.raw(name, kind, kind_flag, members.len(), size, &extra)
        }

        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_STRUCT, name, size, false, members)
        }

        fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_UNION, name, size, false, members)
        }

        fn enum32(&mut self, name: &str, signed: bool, values: &[(&str, i32)]) -> u32 {
            let mut extra = Vec::new();
            for &(v_name, v) in values {
                extra.extend([self.string(v_name), v as u32]);
            }
            self.raw(name, KIND_ENUM, signed, values.len(), 4, &extra)
        }

        fn enum64(&mut self, name: &str, signed: bool, values: &[(&str, i64)]) -> u32 {
            let mut extra = Vec::new();
            for &(v_name, v) in values {
                let v = v as u64;
                extra.extend([self.string(v_name), v as u32, (v >> 32) as u32]);
            }
            self.raw(name, KIND_ENUM64, signed, values.len(), 8, &extra)
        }

        fn build(&self) -> Vec<u8> {
            let type_len = u32::try_from(self.types.len()).expect("fits");
            let str_len = u32::try_from(self.strings.len()).expect("fits");
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
            out.push(BTF_VERSION);
            out.push(0);
            for word in [24u32, 0, type_len, type_len, str_len] {
                out.extend_from_slice(&word.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A fixture exercising most lookups:
    ///
    /// ```c
    /// struct inner { int a; int b; };                       // 8 bytes
    /// typedef int u32;
    /// struct outer {                                        // 56 bytes
    ///     u32 id;                       // 0
    ///     char name[16];                // 4
    ///     struct inner *next;           // 24 (pointer)
    ///     union {                       // 32
    ///         long x;
    ///         struct { int p; const u32 q; };               // q at 36
    ///         struct inner in_union;
    ///     };
    ///     struct inner nested;          // 40
    ///     enum color color;             // 48
    ///     volatile u32 vol;             // 52
    /// };
    /// struct bits { int f1:3; int f2:5; int g; };           // kind_flag = 1
    /// struct oldbits { int m:3 (int encoding); int n @ bit 3 };  // kind_flag = 0
    /// ```
    fn fixture() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let chr = b.int("char", 1);
        let u32_t = b.typedef("u32", int);
        let const_u32 = b.modifier(KIND_CONST, u32_t);
        let vol_u32 = b.modifier(KIND_VOLATILE, u32_t);
        let name_arr = b.array(chr, int, 16);
        let inner = b.strukt("inner", 8, &[("a", int, 0), ("b", int, 32)]);
        let inner_ptr = b.ptr(inner);
        let anon_struct = b.strukt("", 8, &[("p", int, 0), ("q", const_u32, 32)]);
        let anon_union = b.union(
            "",
            8,
            &[("x", long, 0), ("", anon_struct, 0), ("in_union", inner, 0)],
        );
        let color = b.enum32("color", true, &[("RED", 0), ("GREEN", 1), ("NEG", -1)]);
        // A forward declaration with the same name must not shadow the definition.
        b.fwd("outer");
        let outer = b.strukt(
            "outer",
            56,
            &[
                ("id", u32_t, 0),
                ("name", name_arr, 32),
                ("next", inner_ptr, 192),
                ("", anon_union, 256),
                ("nested", inner, 320),
                ("color", color, 384),
                ("vol", vol_u32, 416),
            ],
        );
        b.composite(
            KIND_STRUCT,
            "bits",
            8,
            true,
            &[
                ("f1", int, 3 << 24),
                ("f2", int, (5 << 24) | 3),
                ("g", int, 32),
            ],
        );
        let m3 = b.int_bits("int", 4, 0, 3);
        b.strukt("oldbits", 8, &[("m", m3, 0), ("n", int, 3), ("o", int, 32)]);
        b.enum32("uflags", false, &[("ALL", -1)]);
        b.enum64("big", true, &[("HUGE", 1 << 40), ("MINUS", -5)]);
        b.enum64("ubig", false, &[("TOP", i64::MIN)]);
        b.typedef("outer_t", outer);
        b.build()
    }

    fn parsed() -> Btf {
        Btf::parse(&fixture()).expect("fixture parses")
    }

    #[test]
    fn plain_members() {
        let btf = parsed();
        assert_eq!(
            btf.member("outer", "id").expect("id"),
            Member { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "name").expect("array"),
            Member {
                offset: 4,
                size: 16
            }
        );
        assert_eq!(
            btf.member("outer", "next").expect("pointer"),
            Member {
                offset: 24,
                size: 8
            }
        );
        assert_eq!(
            btf.member("outer", "color").expect("enum member"),
            Member {
                offset: 48,
                size: 4
            }
        );
        assert_eq!(
            btf.member("outer", "vol").expect("volatile typedef"),
            Member {
                offset: 52,
                size: 4
            }
        );
        assert_eq!(btf.struct_size("outer").expect("size"), 56);
        assert_eq!(btf.struct_size("inner").expect("size"), 8);
    }

    #[test]
    fn anonymous_members_are_transparent() {
        let btf = parsed();
        assert_eq!(
            btf.member("outer", "x").expect("x in anonymous union"),
            Member {
                offset: 32,
                size: 8
            }
        );
        assert_eq!(
            btf.member("outer", "q")
                .expect("q in anonymous struct in anonymous union"),
            Member {
                offset: 36,
                size: 4
            }
        );
        assert_eq!(
            btf.member("outer", "in_union.b")
                .expect("embedded path through anonymous union"),
            Member {
                offset: 36,
                size: 4
            }
        );
    }

    #[test]
    fn nested_paths() {
        let btf = parsed();
        assert_eq!(
            btf.member("outer", "nested.b").expect("nested"),
            Member {
                offset: 44,
                size: 4
            }
        );
        assert_eq!(
            btf.member("outer", "nested").expect("embedded struct"),
            Member {
                offset: 40,
                size: 8
            }
        );
        // Lookup through a typedef'd struct name.
        assert_eq!(
            btf.member("outer_t", "nested.a")
                .expect("typedef to struct"),
            Member {
                offset: 40,
                size: 4
            }
        );
    }

    #[test]
    fn path_errors() {
        let btf = parsed();
        assert!(matches!(
            btf.member("outer", "next.a"),
            Err(BtfError::NotAStruct { ref name, kind: "pointer" }) if name == "outer.next"
        ));
        assert!(matches!(
            btf.member("outer", "id.x"),
            Err(BtfError::NotAStruct { kind: "int", .. })
        ));
        assert!(matches!(
            btf.member("outer", "nested.zz"),
            Err(BtfError::MemberNotFound { ref member, .. }) if member == "nested.zz"
        ));
        assert!(matches!(
            btf.member("outer", ""),
            Err(BtfError::MemberNotFound { .. })
        ));
        assert!(matches!(
            btf.member("outer", "nested."),
            Err(BtfError::MemberNotFound { .. })
        ));
        assert!(matches!(
            btf.member("nope", "x"),
            Err(BtfError::TypeNotFound { .. })
        ));
        assert!(matches!(
            btf.member("color", "x"),
            Err(BtfError::NotAStruct { kind: "enum", .. })
        ));
        assert!(matches!(
            btf.struct_size("u32"),
            Err(BtfError::NotAStruct {
                kind: "typedef",
                ..
            })
        ));
    }

    #[test]
    fn bitfields_are_errors() {
        let btf = parsed();
        for member in ["f1", "f2"] {
            assert!(matches!(
                btf.member("bits", member),
                Err(BtfError::Bitfield { .. })
            ));
        }
        assert_eq!(
            btf.member("bits", "g")
                .expect("plain member after bitfields"),
            Member { offset: 4, size: 4 }
        );
        for member in ["m", "n"] {
            assert!(matches!(
                btf.member("oldbits", member),
                Err(BtfError::Bitfield { .. })
            ));
        }
        assert_eq!(
            btf.member("oldbits", "o").expect("plain member"),
            Member { offset: 4, size: 4 }
        );
    }

    #[test]
    fn enums() {
        let btf = parsed();
        assert_eq!(
            btf.enum_values("color").expect("enum"),
            vec![
                ("RED".to_owned(), 0),
                ("GREEN".to_owned(), 1),
                ("NEG".to_owned(), -1)
            ]
        );
        assert_eq!(
            btf.enum_values("uflags").expect("unsigned enum"),
            vec![("ALL".to_owned(), 0xffff_ffff)]
        );
        assert_eq!(
            btf.enum_values("big").expect("enum64"),
            vec![("HUGE".to_owned(), 1 << 40), ("MINUS".to_owned(), -5)]
        );
        assert_eq!(
            btf.enum_values("ubig").expect("unsigned enum64"),
            vec![("TOP".to_owned(), i64::MIN)]
        );
        assert!(matches!(
            btf.enum_values("outer"),
            Err(BtfError::NotAnEnum { kind: "struct", .. })
        ));
        assert!(matches!(
            btf.enum_values("missing"),
            Err(BtfError::TypeNotFound { .. })
        ));
    }

    #[test]
    fn typedefs() {
        let btf = parsed();
        assert!(btf.has_typedef("u32"));
        assert!(btf.has_typedef("outer_t"));
        assert!(!btf.has_typedef("int"));
        assert!(!btf.has_typedef("missing"));
    }

    #[test]
    fn bad_magic_and_endianness() {
        let mut blob = fixture();
        blob[0..2].copy_from_slice(&0x1234u16.to_ne_bytes());
        assert!(matches!(
            Btf::parse(&blob),
            Err(BtfError::BadMagic { found: 0x1234 })
        ));
        blob[0..2].copy_from_slice(&BTF_MAGIC.swap_bytes().to_ne_bytes());
        assert!(matches!(Btf::parse(&blob), Err(BtfError::CrossEndian)));
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Malformed(_))));
        assert!(matches!(Btf::parse(&[0x9f]), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let blob = fixture();
        for len in 0..blob.len() {
            assert!(
                Btf::parse(&blob[..len]).is_err(),
                "truncated to {len} bytes should fail"
            );
        }
        // A type section ending mid-type is caught even if the header agrees.
        let mut b = Builder::new();
        b.strukt("s", 4, &[("a", 1, 0)]);
        let mut blob = b.build();
        let type_len = u32::try_from(b.types.len() - 4).expect("fits");
        blob[12..16].copy_from_slice(&type_len.to_ne_bytes());
        assert!(matches!(Btf::parse(&blob), Err(BtfError::Malformed(_))));
    }

    /// Exercises every lookup; results do not matter, only that nothing panics.
    fn poke(btf: &Btf) {
        for (ty, path) in [
            ("outer", "id"),
            ("outer", "q"),
            ("outer", "in_union.b"),
            ("outer", "nested.b"),
            ("bits", "g"),
            ("oldbits", "m"),
            ("outer_t", "name"),
        ] {
            let _ = btf.member(ty, path);
        }
        for name in ["color", "uflags", "big", "ubig", "outer"] {
            let _ = btf.enum_values(name);
            let _ = btf.struct_size(name);
            let _ = btf.has_typedef(name);
        }
    }

    #[test]
    fn garbage_input_never_panics() {
        let blob = fixture();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut mutated = blob.clone();
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                let at = (next() % mutated.len() as u64) as usize;
                mutated[at] = next() as u8;
            }
            if let Ok(btf) = Btf::parse(&mutated) {
                poke(&btf);
            }
        }
        for len in [0usize, 1, 7, 24, 100, 1000] {
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(Btf::parse(&noise).is_err());
            let mut with_magic = noise.clone();
            if with_magic.len() >= 4 {
                with_magic[0..2].copy_from_slice(&BTF_MAGIC.to_ne_bytes());
                with_magic[2] = BTF_VERSION;
                if let Ok(btf) = Btf::parse(&with_magic) {
                    poke(&btf);
                }
            }
        }
    }

    #[test]
    fn cycles_are_errors_not_hangs() {
        let mut b = Builder::new();
        // typedef a -> typedef b -> typedef a
        let a = b.typedef("a", 2);
        b.typedef("b", a);
        // struct loop { struct loop; /* anonymous, itself */ a val; }
        let looped = b.next_id;
        b.strukt("loop", 8, &[("", looped, 0), ("val", a, 0)]);
        // An array of itself.
        let arr = b.next_id;
        b.array(arr, 0, 2);
        b.strukt("holder", 8, &[("arr", arr, 0)]);
        // A wide DAG of anonymous members: 2^40 paths without the budget.
        let mut level = b.strukt("", 4, &[("leaf", 1, 0)]);
        for _ in 0..40 {
            level = b.strukt("", 4, &[("", level, 0), ("", level, 0)]);
        }
        b.strukt("wide", 4, &[("", level, 0)]);
        let btf = Btf::parse(&b.build()).expect("parses");
        assert!(matches!(
            btf.member("loop", "val"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            btf.member("holder", "arr"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            btf.member("wide", "missing"),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn running_kernel() {
        let path = Path::new(Btf::VMLINUX);
        if !path.exists() {
            println!("skipping: {} does not exist", path.display());
            return;
        }
        let started = std::time::Instant::now();
        let btf = Btf::from_file(path).expect("kernel BTF parses");
        println!("parsed {btf:?} in {:?}", started.elapsed());

        let check = |ty: &str, member: &str, size: Option<u32>| -> Member {
            let m = btf
                .member(ty, member)
                .unwrap_or_else(|e| panic!("{ty}.{member}: {e}"));
            let outer = btf
                .struct_size(ty)
                .unwrap_or_else(|e| panic!("size of {ty}: {e}"));
            println!(
                "{ty}.{member}: offset {} size {} (struct size {outer})",
                m.offset, m.size
            );
            if let Some(size) = size {
                assert_eq!(m.size, size, "size of {ty}.{member}");
            }
            assert!(
                m.offset + m.size <= outer,
                "{ty}.{member} lies outside {ty}"
            );
            m
        };
        check("task_struct", "pid", Some(4));
        check("task_struct", "tgid", Some(4));
        check("task_struct", "comm", Some(16));
        check("task_struct", "flags", Some(4));
        check("task_struct", "exit_code", Some(4));
        check("task_struct", "cgroups", Some(8));
        check("task_struct", "nsproxy", Some(8));
        check("css_set", "dfl_cgrp", Some(8));
        check("cgroup", "kn", Some(8));
        check("kernfs_node", "id", Some(8));
        check("sock", "__sk_common.skc_family", Some(2));
        // Before 5.15 the socket's cgroup pointer is the tagged `val`.
        if btf.member("sock", "sk_cgrp_data.cgroup").is_ok() {
            check("sock", "sk_cgrp_data.cgroup", Some(8));
        } else {
            check("sock", "sk_cgrp_data.val", Some(8));
        }
        let daddr = check("sock_common", "skc_daddr", Some(4));
        let saddr = check("sock_common", "skc_rcv_saddr", Some(4));
        assert_eq!((daddr.offset, saddr.offset), (0, 4));
        check("sk_buff", "dev", Some(8));
        check("net_device", "nd_net.net", Some(8));
        check("net", "ns.inum", Some(4));

        assert!(matches!(
            btf.member("task_struct", "cgroups.dfl_cgrp"),
            Err(BtfError::NotAStruct {
                kind: "pointer",
                ..
            })
        ));
        assert!(matches!(
            btf.member("task_struct", "no_such_member"),
            Err(BtfError::MemberNotFound { .. })
        ));

        // Reset reasons are new in 6.10.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let version = crate::doctor::kernel_version(release.trim()).expect("kernel version");
        match btf.enum_values("sk_rst_reason") {
            Ok(reasons) => {
                println!("sk_rst_reason has {} values", reasons.len());
                assert!(
                    reasons
                        .iter()
                        .any(|(name, _)| name == "SK_RST_REASON_NO_SOCKET")
                );
            }
            Err(e) => assert!(version < (6, 10), "no enum sk_rst_reason on {release}: {e}"),
        }
        assert!(btf.has_typedef("btf_trace_signal_generate"));
        assert!(!btf.has_typedef("btf_trace_no_such_tp"));
    }
}
