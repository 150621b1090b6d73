//! Avro binary encoding of Python values along a plan that kit.serde builds from a parsed schema.
//!
//! The plan is nested tuples (see `kit.serde._plan`): the schema's names are resolved and each
//! field's default is already encoded, so this module only walks values and writes bytes. It is
//! as strict as the schema: an int where a long is wanted, never a float or a bool; a bool
//! where a boolean is, never None or 1; an enum symbol from the list. A union takes its first
//! branch the value fits; that is fastavro's choice for every union ``_plan`` accepts (it refuses
//! float with double, two records, a record with a map), so the bytes are fastavro's
//! (tests/unit/test_serde.py compares them on every schema).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum { name: String, symbols: Vec<String> },
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Vec<Node>),
    Record { name: String, fields: Vec<Field> },
}

struct Field {
    name: Py<PyString>,
    label: String,
    node: Node,
    default: Option<Vec<u8>>, // the default's encoding, written when the record lacks the field
}

/// Why a value does not fit; the path is filled in on the way out (innermost field last). The
/// value is shown (its ``repr``, which runs Python code) only when the error reaches Python.
struct Misfit {
    path: Vec<String>,
    reason: String,
    got: Option<Py<PyAny>>,
}

impl Misfit {
    fn new(reason: String) -> Self {
        Misfit {
            path: Vec::new(),
            reason,
            got: None,
        }
    }

    fn at(mut self, label: &str) -> Self {
        self.path.push(label.to_owned());
        self
    }

    fn into_err(self, py: Python<'_>) -> PyErr {
        let mut text = self.reason;
        if let Some(got) = self.got {
            text = format!("{text}, got {}", describe(got.bind(py)));
        }
        let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
        if path.is_empty() {
            PyValueError::new_err(text)
        } else {
            PyValueError::new_err(format!("field {}: {text}", path.join(".")))
        }
    }
}

type Fit = Result<(), Misfit>;

fn describe(value: &Bound<'_, PyAny>) -> String {
    let kind = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    let mut shown = value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    if shown.len() > 60 {
        let mut end = 57;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push_str("...");
    }
    format!("{kind} {shown}")
}

fn misfit(expected: &str, value: &Bound<'_, PyAny>) -> Misfit {
    Misfit {
        path: Vec::new(),
        reason: format!("expected {expected}"),
        got: Some(value.clone().unbind()),
    }
}

fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_blob(out: &mut Vec<u8>, data: &[u8]) {
    write_long(out, data.len() as i64);
    out.extend_from_slice(data);
}

fn as_int(value: &Bound<'_, PyAny>) -> Option<i64> {
    // bool is a subclass of int in Python: never a number here
    if value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>() {
        value.extract::<i64>().ok()
    } else {
        None
    }
}

fn as_float(value: &Bound<'_, PyAny>) -> Option<f64> {
    if let Ok(f) = value.cast::<PyFloat>() {
        return Some(f.value());
    }
    if value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>() {
        return value.extract::<f64>().ok(); // Avro promotes int to float and double
    }
    None
}

fn symbol_index(symbols: &[String], value: &Bound<'_, PyAny>) -> Option<usize> {
    let text = value.cast::<PyString>().ok()?;
    let text = text.to_str().ok()?;
    symbols.iter().position(|s| s == text)
}

fn type_name(node: &Node) -> String {
    match node {
        Node::Null => "null".into(),
        Node::Boolean => "boolean".into(),
        Node::Int => "int".into(),
        Node::Long => "long".into(),
        Node::Float => "float".into(),
        Node::Double => "double".into(),
        Node::Bytes => "bytes".into(),
        Node::String => "string".into(),
        Node::Fixed(size) => format!("fixed({size})"),
        Node::Enum { name, .. } | Node::Record { name, .. } => name.clone(),
        Node::Array(_) => "array".into(),
        Node::Map(_) => "map".into(),
        Node::Union(_) => "union".into(),
    }
}

/// Whether a union branch takes the value, when that can be told without encoding it
/// (None for records, arrays and maps: the branch is tried).
fn takes(node: &Node, value: &Bound<'_, PyAny>) -> Option<bool> {
    Some(match node {
        Node::Null => value.is_none(),
        Node::Boolean => value.is_instance_of::<PyBool>(),
        Node::Int => as_int(value).is_some_and(|n| i32::try_from(n).is_ok()),
        Node::Long => as_int(value).is_some(),
        Node::Float | Node::Double => as_float(value).is_some(),
        Node::Bytes => value.is_instance_of::<PyBytes>(),
        Node::String => value.is_instance_of::<PyString>(),
        Node::Fixed(size) => value
            .cast::<PyBytes>()
            .is_ok_and(|b| b.as_bytes().len() == *size),
        Node::Enum { symbols, .. } => symbol_index(symbols, value).is_some(),
        Node::Array(_) | Node::Map(_) | Node::Record { .. } | Node::Union(_) => return None,
    })
}

fn encode(node: &Node, value: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> Fit {
    match node {
        Node::Null => {
            if !value.is_none() {
                return Err(misfit("null", value));
            }
        }
        Node::Boolean => match value.cast::<PyBool>() {
            Ok(b) => out.push(b.is_true() as u8),
            Err(_) => return Err(misfit("boolean", value)),
        },
        Node::Int => match as_int(value).and_then(|n| i32::try_from(n).ok()) {
            Some(n) => write_long(out, n as i64),
            None => return Err(misfit("int (32-bit)", value)),
        },
        Node::Long => match as_int(value) {
            Some(n) => write_long(out, n),
            None => return Err(misfit("long (64-bit int)", value)),
        },
        Node::Float => match as_float(value) {
            // a finite value beyond f32's range is an error (as Python's struct.pack says), not inf
            Some(f) if !f.is_finite() || (f as f32).is_finite() => {
                out.extend_from_slice(&(f as f32).to_le_bytes())
            }
            _ => return Err(misfit("float (32-bit)", value)),
        },
        Node::Double => match as_float(value) {
            Some(f) => out.extend_from_slice(&f.to_le_bytes()),
            None => return Err(misfit("double", value)),
        },
        Node::Bytes => match value.cast::<PyBytes>() {
            Ok(b) => write_blob(out, b.as_bytes()),
            Err(_) => return Err(misfit("bytes", value)),
        },
        Node::String => match value.cast::<PyString>() {
            Ok(s) => match s.to_str() {
                Ok(text) => write_blob(out, text.as_bytes()),
                Err(_) => return Err(misfit("string encodable as UTF-8", value)),
            },
            Err(_) => return Err(misfit("string", value)),
        },
        Node::Fixed(size) => match value.cast::<PyBytes>() {
            Ok(b) if b.as_bytes().len() == *size => out.extend_from_slice(b.as_bytes()),
            _ => return Err(misfit(&format!("{size} bytes"), value)),
        },
        Node::Enum { name, symbols } => match symbol_index(symbols, value) {
            Some(i) => write_long(out, i as i64),
            None => {
                return Err(misfit(
                    &format!("a symbol of {name} ({})", symbols.join(", ")),
                    value,
                ))
            }
        },
        Node::Array(items) => {
            let seq: Vec<Bound<'_, PyAny>> = if let Ok(list) = value.cast::<PyList>() {
                list.iter().collect()
            } else if let Ok(tuple) = value.cast::<PyTuple>() {
                tuple.iter().collect()
            } else {
                return Err(misfit("array (list or tuple)", value));
            };
            if !seq.is_empty() {
                write_long(out, seq.len() as i64);
                for (i, item) in seq.iter().enumerate() {
                    encode(items, item, out).map_err(|m| m.at(&format!("[{i}]")))?;
                }
            }
            out.push(0);
        }
        Node::Map(values) => {
            let dict = value
                .cast::<PyDict>()
                .map_err(|_| misfit("map (dict)", value))?;
            // a snapshot: nothing here runs Python code, but a dict changing under an iterator panics
            let items: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> = dict.iter().collect();
            if !items.is_empty() {
                write_long(out, items.len() as i64);
                for (k, v) in items {
                    let key = k
                        .cast::<PyString>()
                        .map_err(|_| misfit("string map key", &k))?;
                    let key = key.to_str().map_err(|_| misfit("string map key", &k))?;
                    write_blob(out, key.as_bytes());
                    encode(values, &v, out).map_err(|m| m.at(&format!("[{key:?}]")))?;
                }
            }
            out.push(0);
        }
        Node::Union(branches) => {
            let start = out.len();
            for (i, branch) in branches.iter().enumerate() {
                match takes(branch, value) {
                    Some(false) => continue,
                    Some(true) => {
                        write_long(out, i as i64);
                        return encode(branch, value, out);
                    }
                    None => {
                        write_long(out, i as i64);
                        if encode(branch, value, out).is_ok() {
                            return Ok(());
                        }
                        out.truncate(start);
                    }
                }
            }
            let names: Vec<String> = branches.iter().map(type_name).collect();
            return Err(misfit(&names.join(" or "), value));
        }
        Node::Record { name, fields } => {
            let dict = value
                .cast::<PyDict>()
                .map_err(|_| misfit(&format!("record {name} (dict)"), value))?;
            let py = value.py();
            for field in fields {
                let found = dict
                    .get_item(field.name.bind(py))
                    .map_err(|e| Misfit::new(e.to_string()).at(&field.label))?;
                match (found, &field.default) {
                    (Some(v), _) => encode(&field.node, &v, out).map_err(|m| m.at(&field.label))?,
                    (None, Some(default)) => out.extend_from_slice(default),
                    (None, None) => {
                        return Err(Misfit::new("missing, and the field has no default".into())
                            .at(&field.label))
                    }
                }
            }
        }
    }
    Ok(())
}

fn item<'py>(plan: &Bound<'py, PyTuple>, i: usize) -> PyResult<Bound<'py, PyAny>> {
    plan.get_item(i)
}

fn build(plan: &Bound<'_, PyAny>) -> PyResult<Node> {
    let plan = plan
        .cast::<PyTuple>()
        .map_err(|_| PyTypeError::new_err("a plan node is a tuple"))?;
    let kind: String = item(plan, 0)?.extract()?;
    Ok(match kind.as_str() {
        "null" => Node::Null,
        "boolean" => Node::Boolean,
        "int" => Node::Int,
        "long" => Node::Long,
        "float" => Node::Float,
        "double" => Node::Double,
        "bytes" => Node::Bytes,
        "string" => Node::String,
        "fixed" => Node::Fixed(item(plan, 1)?.extract()?),
        "enum" => Node::Enum {
            name: item(plan, 1)?.extract()?,
            symbols: item(plan, 2)?.extract()?,
        },
        "array" => Node::Array(Box::new(build(&item(plan, 1)?)?)),
        "map" => Node::Map(Box::new(build(&item(plan, 1)?)?)),
        "union" => {
            let branches = item(plan, 1)?;
            let branches = branches
                .cast::<PyTuple>()
                .map_err(|_| PyTypeError::new_err("union branches are a tuple"))?;
            Node::Union(
                branches
                    .iter()
                    .map(|b| build(&b))
                    .collect::<PyResult<_>>()?,
            )
        }
        "record" => {
            let mut fields = Vec::new();
            let specs = item(plan, 2)?;
            let specs = specs
                .cast::<PyTuple>()
                .map_err(|_| PyTypeError::new_err("record fields are a tuple"))?;
            for spec in specs.iter() {
                let spec = spec
                    .cast::<PyTuple>()
                    .map_err(|_| PyTypeError::new_err("a field is a tuple"))?;
                let label: String = item(spec, 0)?.extract()?;
                let default = item(spec, 2)?;
                fields.push(Field {
                    name: PyString::intern(plan.py(), &label).unbind(),
                    label,
                    node: build(&item(spec, 1)?)?,
                    default: if default.is_none() {
                        None
                    } else {
                        Some(default.extract::<Vec<u8>>()?)
                    },
                });
            }
            Node::Record {
                name: item(plan, 1)?.extract()?,
                fields,
            }
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown plan node {other:?}"
            )))
        }
    })
}

/// Encodes values of one schema, given as a plan (kit.serde builds it).
#[pyclass(frozen, module = "entrain_avro")]
struct Encoder {
    root: Node,
}

#[pymethods]
impl Encoder {
    #[new]
    fn new(plan: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Encoder { root: build(plan)? })
    }

    /// The Avro binary encoding of ``value``, after ``prefix``. A value that does not fit the
    /// schema raises ValueError naming the field and what was expected.
    #[pyo3(signature = (value, prefix = b"" as &[u8]))]
    fn encode<'py>(
        &self,
        value: &Bound<'py, PyAny>,
        prefix: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::with_capacity(prefix.len() + 256);
        out.extend_from_slice(prefix);
        encode(&self.root, value, &mut out).map_err(|m| m.into_err(value.py()))?;
        Ok(PyBytes::new(value.py(), &out))
    }
}

#[pymodule]
fn entrain_avro(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Encoder>()
}
