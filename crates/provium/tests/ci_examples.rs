//! The CI examples docs/ci.md includes (docs/ci/*.y*ml) parse as YAML and shard a
//! suite the way the doc says: a GitHub Actions matrix over shards, each running its
//! `--partition` with a JUnit report kept; a Kubernetes Indexed Job whose pods derive
//! their shard from `JOB_COMPLETION_INDEX`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use serde_yaml::Value;

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/ci")
        .join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn string(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

#[test]
fn github_actions_runs_one_partition_per_matrix_shard_and_keeps_its_junit() {
    let workflow = load("github-actions.yml");
    let job = &workflow["jobs"]["test"];
    let shards: Vec<u64> = job["strategy"]["matrix"]["shard"]
        .as_sequence()
        .expect("a matrix over shards")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let count = shards.len() as u64;
    assert_eq!(shards, (1..=count).collect::<Vec<_>>());
    assert_eq!(job["env"]["SHARDS"].as_u64(), Some(count));
    assert_eq!(job["strategy"]["fail-fast"].as_bool(), Some(false));
    let steps = job["steps"].as_sequence().unwrap();
    let run = steps
        .iter()
        .map(|s| string(&s["run"]))
        .find(|r| r.contains("provium test"))
        .expect("a step running provium test");
    assert!(
        run.contains("--partition \"count:${{ matrix.shard }}/$SHARDS\""),
        "{run}"
    );
    assert!(
        run.contains("--junit junit-${{ matrix.shard }}.xml"),
        "{run}"
    );
    let upload = steps
        .iter()
        .find(|s| string(&s["uses"]).starts_with("actions/upload-artifact@"))
        .expect("an upload step");
    assert_eq!(string(&upload["if"]), "always()", "kept when tests fail");
    assert!(string(&upload["with"]["path"]).contains("junit-${{ matrix.shard }}.xml"));
    assert!(string(&upload["with"]["name"]).contains("${{ matrix.shard }}"));
}

#[test]
fn kubernetes_indexed_job_derives_each_shard_from_its_completion_index() {
    let job = load("k8s-indexed-job.yaml");
    assert_eq!(string(&job["kind"]), "Job");
    let spec = &job["spec"];
    assert_eq!(string(&spec["completionMode"]), "Indexed");
    let completions = spec["completions"].as_u64().expect("completions");
    assert_eq!(spec["parallelism"].as_u64(), Some(completions));
    let container = &spec["template"]["spec"]["containers"][0];
    let shards = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| string(&e["name"]) == "SHARDS")
        .map(|e| string(&e["value"]).to_string())
        .expect("SHARDS in the environment");
    assert_eq!(
        shards,
        completions.to_string(),
        "SHARDS must equal completions"
    );
    let script = string(&container["args"][0]);
    assert_eq!(container["command"][0].as_str(), Some("/bin/sh"));
    assert!(
        script.contains("shard=$((JOB_COMPLETION_INDEX + 1))"),
        "{script}"
    );
    assert!(
        script.contains("--partition \"count:$shard/$SHARDS\""),
        "{script}"
    );
    assert!(
        script.contains("--junit \"/reports/junit-$shard.xml\""),
        "{script}"
    );
    // The script is valid shell.
    let check = Command::new("sh")
        .args(["-n", "-c", script])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
