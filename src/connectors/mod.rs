//! One connector per upstream. Each owns its I/O and speaks to the bridge only through
//! [`crate::connector`].

pub mod exlive;
pub mod iauto360;
pub mod kingxun;
pub mod xchanger;
