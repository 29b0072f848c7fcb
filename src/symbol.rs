//! Symbol interning: every symbol name maps to a small integer id, so that
//! lookups compare integers, never strings. Owns nothing but the name table.

use std::collections::HashMap;

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
    ids: HashMap<Box<str>, Sym>,
    names: Vec<Box<str>>,
}

impl Symbols {
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
