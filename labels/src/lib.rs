#![forbid(unsafe_code)]
//! One way to write a bounded set of metric labels, for every crate of the workspace.
//!
//! Prometheus labels must come from a small fixed set, and the relay keeps one counter per
//! label in a plain array. [`label_enum!`] writes the enum, its `ALL` array (in declaration
//! order), its `as_str` label and its `index` into such arrays, so the three can never
//! disagree:
//!
//! ```
//! labels::label_enum! {
//!     /// Why a frame was dropped.
//!     pub enum Reason {
//!         /// Shorter than a header.
//!         TooShort => "too_short",
//!         TooLarge => "too_large",
//!     }
//! }
//! assert_eq!(Reason::ALL.len(), Reason::COUNT);
//! assert_eq!(Reason::TooLarge.as_str(), "too_large");
//! assert_eq!(Reason::TooLarge.index(), 1);
//! let mut counts = [0u64; Reason::COUNT];
//! counts[Reason::TooShort.index()] += 1;
//! ```

/// Declares a fieldless enum with `ALL`, `COUNT`, `as_str()` and `index()`; see the crate
/// documentation.
#[macro_export]
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        // Variants are labels, named as the label says (`WebTransport` of `Transport`).
        #[allow(clippy::enum_variant_names)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        #[allow(dead_code)]
        impl $name {
            /// Every value, in declaration order (`ALL[v.index()] == v`).
            pub const ALL: [$name; [$($name::$variant),+].len()] = [$($name::$variant),+];
            /// How many values there are: the length of a per-label counter array.
            pub const COUNT: usize = Self::ALL.len();

            /// The stable snake_case label, for metrics and logs.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $label ),+
                }
            }

            /// Position in [`Self::ALL`], for per-label counter arrays.
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    label_enum! {
        enum Colour {
            Red => "red",
            Green => "green",
            Blue => "blue",
        }
    }

    #[test]
    fn all_index_and_labels_agree() {
        for (i, colour) in Colour::ALL.into_iter().enumerate() {
            assert_eq!(colour.index(), i);
        }
        assert_eq!(Colour::COUNT, 3);
        assert_eq!(Colour::Blue.to_string(), "blue");
    }
}
