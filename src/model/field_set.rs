//! A vehicle's set of fields, in two words.

use super::Field;

/// A set of fields as two 64-bit words (the catalog has fewer than 128): a vehicle's
/// entity set costs 16 bytes, not a tree. Not a `u128`, whose 16-byte alignment would
/// pad every vehicle that holds one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FieldSet([u64; 2]);

const _: () = assert!(Field::ALL.len() <= 128, "FieldSet holds 128 fields");

impl FieldSet {
    /// The word and the bit of `field`.
    fn slot(field: Field) -> (usize, u64) {
        let n = field as u8;
        (usize::from(n / 64), 1u64 << (n % 64))
    }
    /// Adds `field`; true when it was not there.
    pub fn insert(&mut self, field: Field) -> bool {
        let had = self.contains(field);
        let (word, bit) = Self::slot(field);
        self.0[word] |= bit;
        !had
    }
    pub fn remove(&mut self, field: Field) {
        let (word, bit) = Self::slot(field);
        self.0[word] &= !bit;
    }
    pub fn contains(&self, field: Field) -> bool {
        let (word, bit) = Self::slot(field);
        self.0[word] & bit != 0
    }
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.0 == [0, 0]
    }
    /// In catalog order.
    pub fn iter(&self) -> impl Iterator<Item = Field> + '_ {
        Field::ALL.iter().copied().filter(|f| self.contains(*f))
    }
}

impl FromIterator<Field> for FieldSet {
    fn from_iter<I: IntoIterator<Item = Field>>(iter: I) -> FieldSet {
        let mut set = FieldSet::default();
        set.extend(iter);
        set
    }
}

impl Extend<Field> for FieldSet {
    fn extend<I: IntoIterator<Item = Field>>(&mut self, iter: I) {
        for f in iter {
            self.insert(f);
        }
    }
}
