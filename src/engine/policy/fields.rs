//! The header fields of one message as the policy sees them, read from
//! the block once per evaluation: every agent and rule that asks about a
//! field walks this list instead of scanning the block again (a message
//! through 1,024 rules was read a dozen times).

use super::super::header::{self, Field};
use super::super::limits::MAX_KEPT_FIELDS;
use super::eval::{firewall_view, Message};
use super::table::Table;

/// One field and the name the rules see it by.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// The field as it is in the block.
    pub field: Field<'a>,
    /// Its name after the header firewall (renamed), or `None` when the
    /// rules never see it (stripped).
    pub view: Option<&'a [u8]>,
}

/// The fields of a header block, kept when there are at most
/// [`MAX_KEPT_FIELDS`], else read afresh on each walk.
pub struct FieldList<'a> {
    t: &'a Table,
    m: &'a Message<'a>,
    kept: [Seen<'a>; MAX_KEPT_FIELDS],
    /// Fields kept; `None` when the block has more than fit.
    len: Option<usize>,
}

impl<'a> FieldList<'a> {
    /// Reads `m`'s header block once, with the firewall's view of `t`.
    pub fn new(t: &'a Table, m: &'a Message<'a>) -> Self {
        let mut kept = [Seen::default(); MAX_KEPT_FIELDS];
        let mut len = Some(0);
        for (i, f) in header::fields(m.headers).enumerate() {
            let Some(slot) = kept.get_mut(i) else {
                len = None;
                break;
            };
            *slot = Seen {
                field: f,
                view: firewall_view(t, m, f.name),
            };
            len = Some(i + 1);
        }
        FieldList { t, m, kept, len }
    }

    /// The fields in order, each with its view.
    #[inline]
    pub fn iter(&self) -> Iter<'a, '_> {
        match self.len {
            Some(n) => Iter::Kept(self.kept.get(..n).unwrap_or(&[]).iter()),
            None => Iter::Scan(header::fields(self.m.headers), self.t, self.m),
        }
    }

    /// The fields in order, as in the block.
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + '_ {
        self.iter().map(|s| s.field)
    }

    /// The values of the fields the rules see by `name`.
    pub fn values<'n>(&self, name: &'n [u8]) -> impl Iterator<Item = &'a [u8]> + use<'a, '_, 'n> {
        self.iter().filter_map(move |s| {
            let v = s.view?;
            (v.len() == name.len() && v.eq_ignore_ascii_case(name)).then_some(s.field.value)
        })
    }
}

/// A walk over a [`FieldList`]: the kept fields, or a scan of the block.
pub enum Iter<'a, 'l> {
    /// The list kept every field.
    Kept(core::slice::Iter<'l, Seen<'a>>),
    /// Too many fields to keep: the block is read again.
    Scan(header::Fields<'a>, &'a Table, &'a Message<'a>),
}

impl<'a> Iterator for Iter<'a, '_> {
    type Item = Seen<'a>;

    #[inline]
    fn next(&mut self) -> Option<Seen<'a>> {
        match self {
            Iter::Kept(i) => i.next().copied(),
            Iter::Scan(f, t, m) => f.next().map(|field| Seen {
                field,
                view: firewall_view(t, m, field.name),
            }),
        }
    }
}
