//! Tokens: how one `usize` names an endpoint's slot and the life of the endpoint in it.
//!
//! A token is the endpoint's slab key plus a generation number:
//!
//! ```text
//!   Token(usize) = | generation (high half) | slab key (low half) |
//! ```
//!
//! The key finds the slot; the generation tells this slot's endpoint from an earlier one that held
//! the same key (why that matters is in [`endpoint`](crate::endpoint)). Every log line names an
//! endpoint by its token as `#key.generation`. This module sits below both the endpoint table and
//! the services, which only ever print tokens.

use std::fmt;

use mio::Token;

/// Bits of a token that hold the slab key; the rest hold the generation.
const KEY_BITS: u32 = usize::BITS / 2;

/// The largest slab key a token can hold; generations wrap at the same bound.
pub const KEY_MASK: usize = (1 << KEY_BITS) - 1;

/// The token of the endpoint in slot `key`, of generation `generation` (taken modulo
/// [`KEY_MASK`] + 1).
pub fn compose(key: usize, generation: usize) -> Token {
    debug_assert!(key <= KEY_MASK, "slab key {key} does not fit in a token");
    Token(key | (generation & KEY_MASK) << KEY_BITS)
}

/// The slab key a token names.
pub fn key(token: Token) -> usize {
    token.0 & KEY_MASK
}

/// The generation a token carries.
pub fn generation(token: Token) -> usize {
    token.0 >> KEY_BITS
}

/// A token printed as `#key.generation` in log lines.
#[derive(Debug, Clone, Copy)]
pub struct Id(pub Token);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", key(self.0), generation(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_carries_its_key_and_generation_apart() {
        let token = compose(5, 7);
        assert_eq!((key(token), generation(token)), (5, 7));
        assert_eq!(Id(token).to_string(), "#5.7");
        // Generations wrap instead of spilling into the key.
        assert_eq!(key(compose(3, KEY_MASK + 2)), 3);
        assert_eq!(generation(compose(3, KEY_MASK + 2)), 1);
    }
}
