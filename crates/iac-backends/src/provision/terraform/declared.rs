//! The offline check [`check_declared`]: every key the tfvars set is a variable the module's
//! HCL declares, with a matching type (Terraform silently drops unknown object attributes).

use std::collections::BTreeMap;

use serde_json::Value;

use iac_core::ProvisionError;

use super::*;

/// A Terraform type constraint, as far as the check needs it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TfType {
    Any,
    String,
    Number,
    Bool,
    List(Box<TfType>),
    Map(Box<TfType>),
    Tuple(Vec<TfType>),
    /// attribute → (type, optional)
    Object(BTreeMap<String, (TfType, bool)>),
}

/// One `variable` block of the module.
#[derive(Debug, Clone)]
pub(super) struct Declared {
    pub(super) ty: TfType,
    pub(super) required: bool,
    pub(super) file: String,
}

fn type_error(file: &str, var: &str, what: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Invalid(format!(
        "{file}: variable {var:?}: unsupported type constraint: {what}"
    ))
}

fn parse_type(
    expr: &hcl::Expression,
    file: &str,
    var: &str,
) -> Result<(TfType, bool), ProvisionError> {
    use hcl::Expression as E;
    match expr {
        E::Variable(v) => Ok((
            match v.as_str() {
                "any" => TfType::Any,
                "string" => TfType::String,
                "number" => TfType::Number,
                "bool" => TfType::Bool,
                other => return Err(type_error(file, var, format!("unknown type {other:?}"))),
            },
            false,
        )),
        E::Parenthesis(inner) => parse_type(inner, file, var),
        E::FuncCall(call) => {
            let name = call.name.name.as_str();
            let one = |args: &[E]| -> Result<TfType, ProvisionError> {
                match args {
                    [t] => Ok(parse_type(t, file, var)?.0),
                    _ => Err(type_error(
                        file,
                        var,
                        format!("{name}(…) takes one type argument"),
                    )),
                }
            };
            match name {
                "list" | "set" => Ok((TfType::List(Box::new(one(&call.args)?)), false)),
                "map" => Ok((TfType::Map(Box::new(one(&call.args)?)), false)),
                "optional" => match call.args.as_slice() {
                    [t] | [t, _] => Ok((parse_type(t, file, var)?.0, true)),
                    _ => Err(type_error(file, var, "optional(type[, default])")),
                },
                "tuple" => match call.args.as_slice() {
                    [E::Array(items)] => Ok((
                        TfType::Tuple(
                            items
                                .iter()
                                .map(|t| parse_type(t, file, var).map(|x| x.0))
                                .collect::<Result<_, _>>()?,
                        ),
                        false,
                    )),
                    _ => Err(type_error(file, var, "tuple([…]) takes a list of types")),
                },
                "object" => match call.args.as_slice() {
                    [E::Object(attrs)] => {
                        let mut out = BTreeMap::new();
                        for (k, t) in attrs {
                            let key = match k {
                                hcl::ObjectKey::Identifier(id) => id.as_str().to_string(),
                                hcl::ObjectKey::Expression(E::String(s)) => s.clone(),
                                hcl::ObjectKey::Expression(E::Variable(v)) => {
                                    v.as_str().to_string()
                                }
                                other => {
                                    return Err(type_error(
                                        file,
                                        var,
                                        format!("object attribute name {other:?}"),
                                    ));
                                }
                            };
                            out.insert(key, parse_type(t, file, var)?);
                        }
                        Ok((TfType::Object(out), false))
                    }
                    _ => Err(type_error(
                        file,
                        var,
                        "object({…}) takes an object of attribute types",
                    )),
                },
                other => Err(type_error(
                    file,
                    var,
                    format!("unknown type function {other}(…)"),
                )),
            }
        }
        other => Err(type_error(file, var, format!("{other:?}"))),
    }
}

/// Every `variable` block in the module's files: name → declaration.
pub(super) fn declared_variables(
    files: &[(String, String)],
) -> Result<BTreeMap<String, Declared>, ProvisionError> {
    let mut out: BTreeMap<String, Declared> = BTreeMap::new();
    for (file, text) in files.iter().filter(|(f, _)| f.ends_with(".tf")) {
        let body = hcl::parse(text).map_err(|e| {
            ProvisionError::Invalid(format!("cannot parse terraform module file {file}: {e}"))
        })?;
        for block in body
            .blocks()
            .filter(|b| b.identifier.as_str() == "variable")
        {
            let [label] = block.labels.as_slice() else {
                return Err(ProvisionError::Invalid(format!(
                    "{file}: a variable block needs exactly one name label"
                )));
            };
            let name = label.as_str().to_string();
            let mut ty = TfType::Any;
            let mut has_default = false;
            for attr in block.body.attributes() {
                match attr.key.as_str() {
                    "type" => ty = parse_type(&attr.expr, file, &name)?.0,
                    "default" => has_default = true,
                    _ => {}
                }
            }
            if let Some(prev) = out.get(&name) {
                return Err(ProvisionError::Invalid(format!(
                    "variable {name:?} is declared twice ({} and {file})",
                    prev.file
                )));
            }
            out.insert(
                name,
                Declared {
                    ty,
                    required: !has_default,
                    file: file.clone(),
                },
            );
        }
    }
    Ok(out)
}

pub(super) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn check_value(v: &Value, ty: &TfType, path: &str) -> Result<(), String> {
    let mismatch = |want: &str| {
        Err(format!(
            "{path} is {}, but the module declares {want}",
            json_kind(v)
        ))
    };
    if v.is_null() {
        return Ok(());
    }
    match ty {
        TfType::Any => Ok(()),
        // Terraform converts between primitives; strings must still look like what they become.
        TfType::String => match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
            _ => mismatch("string"),
        },
        TfType::Number => match v {
            Value::Number(_) => Ok(()),
            Value::String(s) if s.parse::<f64>().is_ok() => Ok(()),
            _ => mismatch("number"),
        },
        TfType::Bool => match v {
            Value::Bool(_) => Ok(()),
            Value::String(s) if s == "true" || s == "false" => Ok(()),
            _ => mismatch("bool"),
        },
        TfType::List(inner) => match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| check_value(item, inner, &format!("{path}[{i}]"))),
            _ => mismatch("a list"),
        },
        TfType::Tuple(types) => match v {
            Value::Array(items) if items.len() == types.len() => items
                .iter()
                .zip(types)
                .enumerate()
                .try_for_each(|(i, (item, t))| check_value(item, t, &format!("{path}[{i}]"))),
            _ => mismatch(&format!("a tuple of {} elements", types.len())),
        },
        TfType::Map(inner) => match v {
            Value::Object(m) => m
                .iter()
                .try_for_each(|(k, item)| check_value(item, inner, &format!("{path}[{k:?}]"))),
            _ => mismatch("a map"),
        },
        TfType::Object(attrs) => match v {
            Value::Object(m) => {
                for (k, item) in m {
                    let Some((t, _)) = attrs.get(k) else {
                        return Err(format!(
                            "{path}.{k} is set, but the module's object type has no attribute {k:?} (it declares: {})",
                            attrs.keys().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    };
                    check_value(item, t, &format!("{path}.{k}"))?;
                }
                for (k, (_, optional)) in attrs {
                    if !optional && !m.contains_key(k) {
                        return Err(format!("{path}.{k} is missing, but the module requires it"));
                    }
                }
                Ok(())
            }
            _ => mismatch("an object"),
        },
    }
}

/// Checks, offline, that the tfvars `value` fits the module `files` (`(file name, HCL text)`):
/// every top-level key is a declared `variable`, every nested value matches the declared type
/// (no attribute the type lacks, none it requires missing), and every variable without a
/// default is set.
pub fn check_declared(value: &Value, files: &[(String, String)]) -> Result<(), ProvisionError> {
    let declared = declared_variables(files)?;
    let Value::Object(top) = value else {
        return Err(ProvisionError::Invalid(format!(
            "{TFVARS_FILE} must be a JSON object, got {}",
            json_kind(value)
        )));
    };
    for (key, v) in top {
        let Some(d) = declared.get(key) else {
            return Err(ProvisionError::Invalid(format!(
                "{TFVARS_FILE} sets {key:?}, which no variable block of the terraform module declares (declared: {})",
                declared.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        check_value(v, &d.ty, &format!("var.{key}")).map_err(|e| {
            ProvisionError::Invalid(format!("{TFVARS_FILE} does not fit {}: {e}", d.file))
        })?;
    }
    for (name, d) in &declared {
        if d.required && !top.contains_key(name) {
            return Err(ProvisionError::Invalid(format!(
                "{TFVARS_FILE} does not set {name:?}, which {} declares without a default",
                d.file
            )));
        }
    }
    Ok(())
}
