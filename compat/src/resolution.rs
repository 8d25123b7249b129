//! Avro schema resolution (specification 1.11, "Schema Resolution"): can a reader schema decode
//! data written with a writer schema?

use std::collections::{HashMap, HashSet};
use std::fmt;

use apache_avro::schema::{
    Alias, DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, RecordSchema,
    UnionSchema, UuidSchema,
};
use apache_avro::Schema;
use serde::{Serialize, Serializer};

/// Why a reader schema cannot read data written with a writer schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncompatibilityKind {
    /// The two schemas have different types and no promotion leads from the writer's to the
    /// reader's.
    TypeMismatch,
    /// Two named types (record, enum, fixed) have different names and no reader alias matches.
    NameMismatch,
    /// Two fixed types have different sizes.
    FixedSizeMismatch,
    /// The writer enum has symbols the reader enum lacks, and the reader enum has no default.
    MissingEnumSymbols,
    /// A reader field is absent from the writer record and has no default value.
    ReaderFieldMissingDefault,
    /// No branch of the reader union can read the writer type.
    MissingUnionBranch,
    /// Two decimals have different scales, or the reader's precision is below the writer's.
    DecimalMismatch,
    /// A schema refers to a named type it does not define.
    UndefinedName,
}

impl IncompatibilityKind {
    /// The SCREAMING_SNAKE name, matching the Confluent names where Confluent has one.
    pub fn as_str(self) -> &'static str {
        match self {
            IncompatibilityKind::TypeMismatch => "TYPE_MISMATCH",
            IncompatibilityKind::NameMismatch => "NAME_MISMATCH",
            IncompatibilityKind::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
            IncompatibilityKind::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            IncompatibilityKind::ReaderFieldMissingDefault => "READER_FIELD_MISSING_DEFAULT_VALUE",
            IncompatibilityKind::MissingUnionBranch => "MISSING_UNION_BRANCH",
            IncompatibilityKind::DecimalMismatch => "DECIMAL_MISMATCH",
            IncompatibilityKind::UndefinedName => "UNDEFINED_NAME",
        }
    }
}

impl fmt::Display for IncompatibilityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for IncompatibilityKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One reason a reader schema cannot read a writer schema's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incompatibility {
    /// What kind of mismatch this is.
    pub kind: IncompatibilityKind,
    /// A JSON-pointer-like location in the reader schema, e.g. `/fields/2/type`, `/symbols`,
    /// `/items`; `/` is the whole schema. Union branches are addressed by index
    /// (`/fields/0/type/1`), and named types referenced by name are addressed where the
    /// reference appears.
    pub path: String,
    /// A human-readable explanation naming the field, symbol or type concerned.
    pub message: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.kind, self.path, self.message)
    }
}

/// Checks whether `reader` can decode data written with `writer`; an empty result means it can.
///
/// Named types referenced by name (`Schema::Ref`) are looked up among the named types each
/// schema defines. Recursive types are handled: a (writer record, reader record) pair already
/// under comparison is assumed compatible when met again.
pub fn can_read(reader: &Schema, writer: &Schema) -> Vec<Incompatibility> {
    let mut resolution = Resolution {
        reader_names: NamedTypes::of(reader),
        writer_names: NamedTypes::of(writer),
        visited: HashSet::new(),
        found: Vec::new(),
    };
    resolution.compare(reader, writer, "", "the top-level schema");
    resolution.found
}

/// The named types a schema defines, by full name and by alias.
struct NamedTypes<'a> {
    by_name: HashMap<Name, &'a Schema>,
}

impl<'a> NamedTypes<'a> {
    fn of(schema: &'a Schema) -> Self {
        let mut named = NamedTypes {
            by_name: HashMap::new(),
        };
        named.collect(schema);
        named
    }

    fn collect(&mut self, schema: &'a Schema) {
        match schema {
            Schema::Record(record) => {
                self.define(&record.name, record.aliases.as_deref(), schema);
                for field in &record.fields {
                    self.collect(&field.schema);
                }
            }
            Schema::Enum(EnumSchema { name, aliases, .. })
            | Schema::Fixed(FixedSchema { name, aliases, .. })
            | Schema::Duration(FixedSchema { name, aliases, .. })
            | Schema::Uuid(UuidSchema::Fixed(FixedSchema { name, aliases, .. }))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(FixedSchema { name, aliases, .. }),
                ..
            }) => self.define(name, aliases.as_deref(), schema),
            Schema::Array(array) => self.collect(&array.items),
            Schema::Map(map) => self.collect(&map.types),
            Schema::Union(union) => {
                for variant in union.variants() {
                    self.collect(variant);
                }
            }
            _ => {}
        }
    }

    fn define(&mut self, name: &Name, aliases: Option<&[Alias]>, schema: &'a Schema) {
        // The first definition wins, as in the parser.
        self.by_name.entry(name.clone()).or_insert(schema);
        for alias in aliases.unwrap_or_default() {
            let alias = alias.fully_qualified_name(name.namespace()).into_owned();
            self.by_name.entry(alias).or_insert(schema);
        }
    }

    /// Follows a reference to the schema it names; other schemas are returned as they are.
    fn resolve(&self, schema: &'a Schema) -> Result<&'a Schema, &'a Name> {
        match schema {
            Schema::Ref { name } => match self.by_name.get(name) {
                // A definition is never itself a reference, so one step is enough.
                Some(found) => Ok(found),
                None => Err(name),
            },
            other => Ok(other),
        }
    }
}

/// A schema reduced to what matters for resolution: logical types are read as their
/// underlying Avro type.
#[derive(Clone, Copy)]
enum Shape<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a UnionSchema),
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed(&'a FixedSchema),
    /// An unresolved reference; resolved schemas never have this shape.
    Ref,
}

impl<'a> Shape<'a> {
    fn of(schema: &'a Schema) -> Self {
        match schema {
            Schema::Null => Shape::Null,
            Schema::Boolean => Shape::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Shape::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Shape::Long,
            Schema::Float => Shape::Float,
            Schema::Double => Shape::Double,
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => Shape::Bytes,
            Schema::String | Schema::Uuid(UuidSchema::String) => Shape::String,
            Schema::Array(array) => Shape::Array(&array.items),
            Schema::Map(map) => Shape::Map(&map.types),
            Schema::Union(union) => Shape::Union(union),
            Schema::Record(record) => Shape::Record(record),
            Schema::Enum(enumeration) => Shape::Enum(enumeration),
            Schema::Fixed(fixed)
            | Schema::Duration(fixed)
            | Schema::Uuid(UuidSchema::Fixed(fixed))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(fixed),
                ..
            }) => Shape::Fixed(fixed),
            Schema::Ref { .. } => Shape::Ref,
        }
    }
}

impl fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Null => f.write_str("`null`"),
            Shape::Boolean => f.write_str("`boolean`"),
            Shape::Int => f.write_str("`int`"),
            Shape::Long => f.write_str("`long`"),
            Shape::Float => f.write_str("`float`"),
            Shape::Double => f.write_str("`double`"),
            Shape::Bytes => f.write_str("`bytes`"),
            Shape::String => f.write_str("`string`"),
            Shape::Array(_) => f.write_str("`array`"),
            Shape::Map(_) => f.write_str("`map`"),
            Shape::Union(_) => f.write_str("`union`"),
            Shape::Record(record) => write!(f, "record `{}`", record.name),
            Shape::Enum(enumeration) => write!(f, "enum `{}`", enumeration.name),
            Shape::Fixed(fixed) => write!(f, "fixed `{}` (size {})", fixed.name, fixed.size),
            Shape::Ref => f.write_str("an undefined reference"),
        }
    }
}

/// Whether the writer's primitive value can be promoted to the reader's type.
fn promotes(reader: Shape<'_>, writer: Shape<'_>) -> bool {
    matches!(
        (writer, reader),
        (Shape::Int, Shape::Long | Shape::Float | Shape::Double)
            | (Shape::Long, Shape::Float | Shape::Double)
            | (Shape::Float, Shape::Double)
            | (Shape::String, Shape::Bytes)
            | (Shape::Bytes, Shape::String)
    )
}

/// Whether a reader type name accepts a writer type name: equal full names, or equal names
/// where either side has no namespace, or a reader alias that matches the writer name the same
/// way. Namespaces are not ignored when both sides have one: moving a type to another namespace
/// needs a reader alias.
fn name_accepts(reader: &Name, reader_aliases: Option<&[Alias]>, writer: &Name) -> bool {
    let same = |candidate: &Name| {
        if candidate.namespace().is_some() && writer.namespace().is_some() {
            candidate == writer
        } else {
            candidate.name() == writer.name()
        }
    };
    same(reader)
        || reader_aliases
            .unwrap_or_default()
            .iter()
            .any(|alias| same(&alias.fully_qualified_name(reader.namespace())))
}

/// Whether a reader union branch is chosen for a writer type without promotion (`exact`) or
/// with it. Only the kind and the name are compared here; the chosen branch is then resolved
/// in depth, as the specification prescribes.
fn branch_matches(reader: Shape<'_>, writer: Shape<'_>, exact: bool) -> bool {
    match (reader, writer) {
        (Shape::Record(r), Shape::Record(w)) => {
            name_accepts(&r.name, r.aliases.as_deref(), &w.name)
        }
        (Shape::Enum(r), Shape::Enum(w)) => name_accepts(&r.name, r.aliases.as_deref(), &w.name),
        (Shape::Fixed(r), Shape::Fixed(w)) => {
            r.size == w.size && name_accepts(&r.name, r.aliases.as_deref(), &w.name)
        }
        (Shape::Array(_), Shape::Array(_)) | (Shape::Map(_), Shape::Map(_)) => true,
        (r, w) if is_primitive(r) && is_primitive(w) => {
            std::mem::discriminant(&r) == std::mem::discriminant(&w) || (!exact && promotes(r, w))
        }
        _ => false,
    }
}

fn is_primitive(shape: Shape<'_>) -> bool {
    matches!(
        shape,
        Shape::Null
            | Shape::Boolean
            | Shape::Int
            | Shape::Long
            | Shape::Float
            | Shape::Double
            | Shape::Bytes
            | Shape::String
    )
}

/// One resolution run: the name tables of both schemas, the record pairs already entered,
/// and the incompatibilities found so far.
struct Resolution<'a> {
    reader_names: NamedTypes<'a>,
    writer_names: NamedTypes<'a>,
    visited: HashSet<(Name, Name)>,
    found: Vec<Incompatibility>,
}

impl<'a> Resolution<'a> {
    fn report(&mut self, kind: IncompatibilityKind, path: String, message: String) {
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        self.found.push(Incompatibility {
            kind,
            path,
            message,
        });
    }

    /// Compares `reader` and `writer` found at `path` in the reader schema; `subject` names
    /// that place for messages ("field `x` (in record a.B)").
    fn compare(&mut self, reader: &'a Schema, writer: &'a Schema, path: &str, subject: &str) {
        let reader = match self.reader_names.resolve(reader) {
            Ok(schema) => schema,
            Err(name) => {
                let message =
                    format!("{subject}: type `{name}` is not defined in the reader schema");
                return self.report(IncompatibilityKind::UndefinedName, path.to_owned(), message);
            }
        };
        let writer = match self.writer_names.resolve(writer) {
            Ok(schema) => schema,
            Err(name) => {
                let message =
                    format!("{subject}: type `{name}` is not defined in the writer schema");
                return self.report(IncompatibilityKind::UndefinedName, path.to_owned(), message);
            }
        };

        match (Shape::of(reader), Shape::of(writer)) {
            // A writer union is readable when each of its branches is.
            (Shape::Union(readers), Shape::Union(writers)) => {
                for branch in writers.variants() {
                    self.compare_to_union(readers, branch, path, subject);
                }
            }
            (_, Shape::Union(writers)) => {
                for branch in writers.variants() {
                    self.compare(reader, branch, path, subject);
                }
            }
            (Shape::Union(readers), _) => self.compare_to_union(readers, writer, path, subject),
            (reader_shape, writer_shape) => {
                if let (Schema::Decimal(r), Schema::Decimal(w)) = (reader, writer) {
                    self.compare_decimals(r, w, path, subject);
                }
                self.compare_shapes(reader_shape, writer_shape, path, subject);
            }
        }
    }

    /// Resolves a non-union writer type against a reader union: the first branch of the same
    /// type (and name) is chosen, else the first branch the writer type promotes to. Preferring
    /// an exact branch over an earlier promotable one follows the reference implementations;
    /// it never changes the verdict for primitives.
    fn compare_to_union(
        &mut self,
        readers: &'a UnionSchema,
        writer: &'a Schema,
        path: &str,
        subject: &str,
    ) {
        let writer = match self.writer_names.resolve(writer) {
            Ok(schema) => schema,
            Err(name) => {
                let message =
                    format!("{subject}: type `{name}` is not defined in the writer schema");
                return self.report(IncompatibilityKind::UndefinedName, path.to_owned(), message);
            }
        };
        let writer_shape = Shape::of(writer);
        let branches: Vec<(usize, &'a Schema, Shape<'a>)> = readers
            .variants()
            .iter()
            .enumerate()
            .filter_map(|(index, branch)| {
                let branch = self.reader_names.resolve(branch).ok()?;
                Some((index, branch, Shape::of(branch)))
            })
            .collect();
        let chosen = [true, false].into_iter().find_map(|exact| {
            branches
                .iter()
                .find(|(_, _, shape)| branch_matches(*shape, writer_shape, exact))
        });
        match chosen {
            Some(&(index, branch, _)) => {
                let path = format!("{path}/{index}");
                self.compare(branch, writer, &path, subject);
            }
            None => {
                let message = format!(
                    "{subject}: the reader union has no branch that can read writer type {writer_shape}"
                );
                self.report(
                    IncompatibilityKind::MissingUnionBranch,
                    path.to_owned(),
                    message,
                );
            }
        }
    }

    /// The specification says two decimals match only if scale and precision are equal. We
    /// accept a reader precision at least the writer's, since every value the writer can hold
    /// is then representable by the reader; a different scale changes the meaning of the
    /// stored unscaled integer, so it must match.
    fn compare_decimals(
        &mut self,
        reader: &DecimalSchema,
        writer: &DecimalSchema,
        path: &str,
        subject: &str,
    ) {
        if reader.scale != writer.scale {
            let message = format!(
                "{subject}: reader decimal has scale {} but the writer's has scale {}",
                reader.scale, writer.scale
            );
            self.report(
                IncompatibilityKind::DecimalMismatch,
                format!("{path}/scale"),
                message,
            );
        }
        if reader.precision < writer.precision {
            let message = format!(
                "{subject}: reader decimal has precision {}, below the writer's precision {}",
                reader.precision, writer.precision
            );
            self.report(
                IncompatibilityKind::DecimalMismatch,
                format!("{path}/precision"),
                message,
            );
        }
    }

    fn compare_shapes(&mut self, reader: Shape<'a>, writer: Shape<'a>, path: &str, subject: &str) {
        match (reader, writer) {
            (Shape::Array(r), Shape::Array(w)) => {
                self.compare(
                    r,
                    w,
                    &format!("{path}/items"),
                    &format!("items of {subject}"),
                );
            }
            (Shape::Map(r), Shape::Map(w)) => {
                self.compare(
                    r,
                    w,
                    &format!("{path}/values"),
                    &format!("values of {subject}"),
                );
            }
            (Shape::Record(r), Shape::Record(w)) => self.compare_records(r, w, path, subject),
            (Shape::Enum(r), Shape::Enum(w)) => self.compare_enums(r, w, path, subject),
            (Shape::Fixed(r), Shape::Fixed(w)) => {
                if !name_accepts(&r.name, r.aliases.as_deref(), &w.name) {
                    self.report_name_mismatch("fixed", &r.name, &w.name, path, subject);
                } else if r.size != w.size {
                    let message = format!(
                        "{subject}: fixed `{}` has size {} in the reader but {} in the writer",
                        r.name, r.size, w.size
                    );
                    self.report(
                        IncompatibilityKind::FixedSizeMismatch,
                        format!("{path}/size"),
                        message,
                    );
                }
            }
            (r, w)
                if is_primitive(r)
                    && is_primitive(w)
                    && (std::mem::discriminant(&r) == std::mem::discriminant(&w)
                        || promotes(r, w)) => {}
            (r, w) => {
                let message = format!("{subject}: reader type {r} cannot read writer type {w}");
                self.report(IncompatibilityKind::TypeMismatch, path.to_owned(), message);
            }
        }
    }

    fn report_name_mismatch(
        &mut self,
        what: &str,
        reader: &Name,
        writer: &Name,
        path: &str,
        subject: &str,
    ) {
        let message = format!(
            "{subject}: reader {what} `{reader}` cannot read writer {what} `{writer}`: \
             the names differ and no reader alias matches"
        );
        self.report(
            IncompatibilityKind::NameMismatch,
            format!("{path}/name"),
            message,
        );
    }

    fn compare_records(
        &mut self,
        reader: &'a RecordSchema,
        writer: &'a RecordSchema,
        path: &str,
        subject: &str,
    ) {
        if !name_accepts(&reader.name, reader.aliases.as_deref(), &writer.name) {
            return self.report_name_mismatch("record", &reader.name, &writer.name, path, subject);
        }
        // Met again inside itself (a recursive type): the pair is already being compared.
        if !self
            .visited
            .insert((writer.name.clone(), reader.name.clone()))
        {
            return;
        }
        for (index, field) in reader.fields.iter().enumerate() {
            let field_subject = format!("field `{}` (in record {})", field.name, reader.name);
            // `RecordSchema::lookup` also holds the writer's own field aliases, which play no
            // part in resolution, so search the fields themselves.
            let written = writer
                .fields
                .iter()
                .find(|w| w.name == field.name)
                .or_else(|| {
                    writer
                        .fields
                        .iter()
                        .find(|w| field.aliases.contains(&w.name))
                });
            match written {
                Some(written) => self.compare(
                    &field.schema,
                    &written.schema,
                    &format!("{path}/fields/{index}/type"),
                    &field_subject,
                ),
                None if field.default.is_some() => {}
                None => {
                    let message = format!(
                        "{field_subject} is missing from the writer schema and has no default"
                    );
                    self.report(
                        IncompatibilityKind::ReaderFieldMissingDefault,
                        format!("{path}/fields/{index}"),
                        message,
                    );
                }
            }
        }
    }

    fn compare_enums(
        &mut self,
        reader: &EnumSchema,
        writer: &EnumSchema,
        path: &str,
        subject: &str,
    ) {
        if !name_accepts(&reader.name, reader.aliases.as_deref(), &writer.name) {
            return self.report_name_mismatch("enum", &reader.name, &writer.name, path, subject);
        }
        // With a default symbol the reader maps unknown writer symbols to it.
        if reader.default.is_some() {
            return;
        }
        let missing: Vec<String> = writer
            .symbols
            .iter()
            .filter(|symbol| !reader.symbols.contains(symbol))
            .map(|symbol| format!("`{symbol}`"))
            .collect();
        if !missing.is_empty() {
            let message = format!(
                "{subject}: reader enum `{}` lacks writer symbols {} and has no default",
                reader.name,
                missing.join(", ")
            );
            self.report(
                IncompatibilityKind::MissingEnumSymbols,
                format!("{path}/symbols"),
                message,
            );
        }
    }
}
