//! Unit tests of the terraform provisioner's pure parts: the embedded module's declarations,
//! the offline type check, config redaction, output and plan parsing.

use iac_core::{Action, ServiceName};
use std::path::PathBuf;

use super::declared::{TfType, declared_variables};
use super::*;
use crate::secret::{REDACTED, Secret};

fn module() -> Vec<(String, String)> {
    EMBEDDED_MODULE
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

#[test]
fn embedded_module_declares_the_expected_variables() {
    let d = declared_variables(&module()).unwrap();
    let names: Vec<&str> = d.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "docker_host",
            "edge_port",
            "mesh_port",
            "network",
            "project",
            "services"
        ]
    );
    assert!(d["project"].required && d["services"].required && !d["docker_host"].required);
    let TfType::Map(svc) = &d["services"].ty else {
        panic!("services is a map: {:?}", d["services"].ty)
    };
    let TfType::Object(attrs) = svc.as_ref() else {
        panic!("of objects")
    };
    let TfType::Object(envoy) = &attrs["envoy"].0 else {
        panic!("envoy is an object")
    };
    let TfType::List(ports) = &envoy["ports"].0 else {
        panic!("ports is a list")
    };
    let TfType::Object(port) = ports.as_ref() else {
        panic!("of objects")
    };
    assert_eq!(
        port["external"],
        (TfType::Number, true),
        "external is optional"
    );
    assert_eq!(port["internal"], (TfType::Number, false));
}

#[test]
fn type_check_reports_the_path() {
    let files = vec![(
        "v.tf".to_string(),
        r#"variable "x" { type = map(object({ a = string, b = optional(list(number)) })) }"#
            .to_string(),
    )];
    check_declared(
        &serde_json::json!({"x": {"k": {"a": "s", "b": [1, 2]}}}),
        &files,
    )
    .unwrap();
    check_declared(&serde_json::json!({"x": {"k": {"a": "s"}}}), &files).unwrap();
    let e =
        check_declared(&serde_json::json!({"x": {"k": {"a": "s", "c": 1}}}), &files).unwrap_err();
    assert!(e.to_string().contains(r#"var.x["k"].c is set"#), "{e}");
    let e = check_declared(&serde_json::json!({"x": {"k": {"b": []}}}), &files).unwrap_err();
    assert!(e.to_string().contains(r#"var.x["k"].a is missing"#), "{e}");
    let e = check_declared(
        &serde_json::json!({"x": {"k": {"a": "s", "b": ["one"]}}}),
        &files,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"var.x["k"].b[0] is a string, but the module declares number"#),
        "{e}"
    );
    let e = check_declared(&serde_json::json!({}), &files).unwrap_err();
    assert!(e.to_string().contains(r#"does not set "x""#), "{e}");
}

#[test]
fn unparsable_module_is_an_error_naming_the_file() {
    let files = vec![("broken.tf".to_string(), "variable \"x\" {".to_string())];
    let e = check_declared(&serde_json::json!({}), &files).unwrap_err();
    assert!(e.to_string().contains("broken.tf"), "{e}");
}

#[test]
fn config_redacts_every_env_value() {
    let mut cfg = TerraformConfig::default();
    cfg.extra_env
        .insert("TF_TOKEN_app_terraform_io".into(), Secret::new("s3cr3t"));
    // A name that does not look secret is no reason to print its value.
    cfg.extra_env
        .insert("TF_CLI_ARGS".into(), Secret::new("-var=db_pass=hunter2"));
    let dbg = format!("{cfg:?}");
    let ser = serde_json::to_string(&cfg).unwrap();
    for s in [&dbg, &ser] {
        assert!(!s.contains("s3cr3t") && !s.contains("hunter2"), "{s}");
        assert!(s.contains("TF_CLI_ARGS") && s.contains(REDACTED), "{s}");
    }
    let read: TerraformConfig =
        serde_json::from_str(r#"{"extra_env": {"TF_LOG": "info"}}"#).unwrap();
    assert_eq!(read.extra_env["TF_LOG"].expose(), "info");
    assert!(
        serde_json::from_str::<TerraformConfig>(&ser).is_err(),
        "a dumped config's placeholder is not taken as a value"
    );
    let back: TerraformConfig = serde_json::from_str(r#"{"binary": "tofu"}"#).unwrap();
    assert_eq!(back.binary, "tofu");
    assert_eq!(back.work_root, PathBuf::from(".iac/projects"));
}

#[test]
fn outputs_parse_and_empty_state() {
    assert_eq!(parse_outputs("{}\n").unwrap(), Outputs::default());
    let o = parse_outputs(
        r#"{"services":{"sensitive":false,"type":"x","value":{"api":{"host_ip":"127.0.0.1","host_port":41001,
          "app_container_id":"a","app_container_name":"demo-api","envoy_container_id":"b",
          "envoy_container_name":"demo-api-envoy","spec_hash":"h","image":"i"},
          "web":{"host_ip":"127.0.0.1","host_port":41002,"edge_host_ip":"0.0.0.0","edge_host_port":8081,
          "app_container_id":"c","app_container_name":"demo-web","envoy_container_id":"d",
          "envoy_container_name":"demo-web-envoy","spec_hash":"h2","image":"i2"}}},
          "network":{"sensitive":false,"type":"y","value":{"id":"n","name":"iacnet"}}}"#,
    )
    .unwrap();
    assert_eq!(
        o.services["api"].endpoint(),
        Some("127.0.0.1:41001".parse().unwrap())
    );
    // Edges: null for a service without one; an unspecified host address is dialed on loopback.
    assert_eq!(o.services["api"].edge(), None);
    assert_eq!(
        o.services["web"].edge(),
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert_eq!(o.network_name.as_deref(), Some("iacnet"));
    let e = parse_outputs("not json").unwrap_err();
    assert!(e.to_string().contains("output -json"), "{e}");
}

#[test]
fn plan_changes_map_per_service() {
    let rc = |addr: &str, name: &str, idx: &str, actions: &[&str]| {
        serde_json::json!({"address": addr, "mode": "managed", "type": "docker_container", "name": name,
            "index": idx, "change": {"actions": actions, "replace_paths": [["image"]]}})
    };
    let plan = serde_json::json!({"resource_changes": [
        rc("docker_container.app[\"a\"]", "app", "a", &["create"]),
        rc("docker_container.envoy[\"a\"]", "envoy", "a", &["create"]),
        rc("docker_container.app[\"b\"]", "app", "b", &["delete", "create"]),
        rc("docker_container.envoy[\"b\"]", "envoy", "b", &["no-op"]),
        rc("docker_container.app[\"c\"]", "app", "c", &["no-op"]),
        rc("docker_container.envoy[\"c\"]", "envoy", "c", &["no-op"]),
        rc("docker_container.app[\"d\"]", "app", "d", &["update"]),
        rc("docker_container.app[\"gone\"]", "app", "gone", &["delete"]),
        {"address": "docker_image.this[\"x\"]", "mode": "managed", "type": "docker_image", "name": "this",
         "index": "x", "change": {"actions": ["create"]}},
    ]});
    let svcs: Vec<ServiceName> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|s| ServiceName::new(s).unwrap())
        .collect();
    let ch = changes_from_plan(&plan, &svcs).unwrap();
    let actions: Vec<(&str, Action)> = ch.iter().map(|c| (c.service.as_str(), c.action)).collect();
    assert_eq!(
        actions,
        [
            ("a", Action::Create),
            ("b", Action::Replace),
            ("c", Action::Unchanged),
            ("d", Action::Replace),
            ("e", Action::Unchanged),
            ("gone", Action::Remove)
        ]
    );
    assert!(
        ch[1]
            .reason
            .contains("docker_container.app[\"b\"] is replaced (image changed)"),
        "{}",
        ch[1].reason
    );
    assert!(
        ch[3].reason.contains("updated in place"),
        "{}",
        ch[3].reason
    );
}
