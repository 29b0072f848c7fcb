//! Symbol interning: every symbol name maps to a small integer id, so that
//! lookups compare integers, never strings. Owns nothing but the name table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast non-cryptographic hasher for short names (FxHash's mixing step).
/// Symbol names come from the program itself, so hash flooding is not a
/// concern worth SipHash's cost on every symbol read.
#[derive(Default, Clone, Copy)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// An interned symbol name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Default)]
pub struct Sym(pub u32);

impl Sym {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The table of interned names for one interpreter.
#[derive(Default)]
pub struct Symbols {
    ids: HashMap<Box<str>, Sym, BuildHasherDefault<NameHasher>>,
    names: Vec<Box<str>>,
}

impl Symbols {
    /// A table with room for `n` names.
    pub fn with_capacity(n: usize) -> Symbols {
        Symbols {
            ids: HashMap::with_capacity_and_hasher(n, Default::default()),
            names: Vec::with_capacity(n),
        }
    }

    pub fn intern(&mut self, name: &str) -> Sym {
        if let Some(&sym) = self.ids.get(name) {
            return sym;
        }
        let sym = Sym(self.names.len() as u32);
        self.names.push(name.into());
        self.ids.insert(name.into(), sym);
        sym
    }

    pub fn name(&self, sym: Sym) -> &str {
        &self.names[sym.index()]
    }

    pub fn lookup(&self, name: &str) -> Option<Sym> {
        self.ids.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable() {
        let mut s = Symbols::default();
        let a = s.intern("foo/bar");
        let b = s.intern("x");
        assert_eq!(s.intern("foo/bar"), a);
        assert_ne!(a, b);
        assert_eq!(s.name(b), "x");
        assert_eq!(s.lookup("nope"), None);
    }
}
