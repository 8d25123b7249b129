//! Avro schema compatibility under the Confluent compatibility modes, decided by Avro's
//! schema-resolution rules.
//!
//! One job: say whether a schema may evolve into another, and if not, where and why. The
//! schema registry server and the `contracts check` CLI both call [`check`].
//!
//! # Directions
//!
//! Everything reduces to one question, answered by [`can_read`]: can a *reader* schema decode
//! data written with a *writer* schema, by the rules of the Avro 1.11 specification ("Schema
//! Resolution")? The modes pick which schema plays which part:
//!
//! | mode                    | reader            | writer            | against              |
//! |-------------------------|-------------------|-------------------|----------------------|
//! | `BACKWARD`              | candidate         | existing          | latest version       |
//! | `FORWARD`               | existing          | candidate         | latest version       |
//! | `FULL`                  | both ways         | both ways         | latest version       |
//! | `*_TRANSITIVE`          | as above          | as above          | every version        |
//! | `NONE`                  | —                 | —                 | nothing              |
//!
//! "Backward compatible" thus means consumers upgraded to the new schema still read old data;
//! "forward compatible" means consumers still on an old schema read new data.
//!
//! # Rules applied
//!
//! Primitives match themselves; the writer's `int` promotes to `long`, `float`, `double`,
//! `long` to `float`, `double`, `float` to `double`, and `string` and `bytes` to each other.
//! Logical types are compared as their underlying type, except that two decimals also need
//! the same scale and a reader precision at least the writer's. Records, enums and fixed types
//! need matching names (or a reader alias naming the writer type); a reader field missing from
//! the writer needs a default; writer enum symbols missing from the reader need a reader enum
//! default; fixed sizes must be equal. Every branch of a writer union must be readable.

mod check;
mod mode;
mod resolution;

pub use check::{check, CompatibilityError, Direction};
pub use mode::{CompatibilityMode, ParseModeError};
pub use resolution::{can_read, Incompatibility, IncompatibilityKind};
