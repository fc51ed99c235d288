use super::*;
use crate::config::file::ConfigFile;
use std::path::Path;

fn file(text: &str) -> AgentFile {
    ConfigFile::parse(Path::new("/etc/conjoiner/conjoiner.toml"), text.to_string())
        .unwrap()
        .values
}

fn resolve(text: &str) -> Result<AgentSettings, SettingError> {
    AgentSettings::resolve(&file(text), None)
}

#[test]
fn with_nothing_given_every_setting_is_the_lan_preset_and_the_documented_default() {
    let s = resolve("").unwrap();
    assert_eq!(s.name, default_name());
    assert_eq!(
        (s.cluster.as_str(), s.bind.as_str(), s.http.as_str()),
        (DEFAULT_CLUSTER, DEFAULT_BIND, DEFAULT_HTTP)
    );
    assert_eq!(s.data_dir, std::env::current_dir().unwrap().join("conjoiner-data"));
    assert!(s.mdns && s.join.is_empty() && s.operators.is_empty());
    assert_eq!(s.profile_name, ProfileName::Lan);
    assert_eq!(
        s.profile.cluster.probe_interval,
        crate::cluster::ClusterConfig::lan().probe_interval
    );
    assert_eq!(s.max_package, crate::deploy::package::DEFAULT_MAX_PACKAGE_BYTES);
    assert_eq!(s.log_level, "info");
}

#[test]
fn the_command_line_wins_over_the_file_which_wins_over_the_preset() {
    let from_file = file(
        "cluster = \"prod\"\nprofile = \"wan\"\nbind = \"0.0.0.0:8000\"\ntags = { role = \"web\" }\n\
         [membership]\nsuspicion_max = \"50s\"\nprobe_interval = \"3s\"\n",
    );
    let flags = AgentFile {
        bind: Some("127.0.0.1:9000".into()),
        tags: Some([("dc".to_string(), "ams".to_string())].into()),
        ..Default::default()
    };
    let s = AgentSettings::resolve(&flags.over(from_file), None).unwrap();
    assert_eq!(s.bind, "127.0.0.1:9000", "the flag");
    assert_eq!(s.cluster, "prod", "the file");
    assert_eq!(s.tags.len(), 2, "tags merge key by key: {:?}", s.tags);
    let wan = crate::cluster::ClusterConfig::wan();
    assert_eq!(
        s.profile.cluster.suspicion_max,
        Duration::from_secs(50),
        "the file's tuning"
    );
    assert_eq!(s.profile.cluster.suspicion_min, wan.suspicion_min, "the wan preset");
    assert_eq!(
        s.profile.deployer.fetch_timeout,
        Duration::from_secs(900),
        "the wan preset"
    );
}

#[test]
fn what_check_prints_reads_back_as_the_same_settings() {
    let s = resolve(
        "name = \"web-1\"\ncluster = \"prod\"\nprofile = \"wan\"\ntags = { role = \"web\" }\n\
         join = [\"10.0.0.1:7946\"]\nmetrics = \"0.0.0.0:9464\"\nmax_package = \"100M\"\n\
         status_interval = \"45s\"\nlog_level = \"conjoiner=debug,info\"\n\
         operators = [{ key = \"cjop1AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\" }]\n\
         [membership]\nprobe_interval = \"3s\"\n[deployer]\nprobation = \"5s\"\n[monitor]\ntimeout = \"4s\"\n",
    );
    // An operator key that does not read is named; the round trip is
    // shown with a real one below.
    assert_eq!(s.unwrap_err().key, "operators");
    let key = crate::command::operator_key::OperatorSecret::generate()
        .public()
        .to_string();
    let text = format!(
        "name = \"web-1\"\ncluster = \"prod\"\nprofile = \"wan\"\ntags = {{ role = \"web\" }}\n\
         join = [\"10.0.0.1:7946\"]\nmetrics = \"0.0.0.0:9464\"\nmax_package = \"100M\"\n\
         status_interval = \"45s\"\nlog_level = \"conjoiner=debug,info\"\n\
         operators = [{{ key = \"{key}\", modules = [\"web-*\"] }}]\n\
         [membership]\nprobe_interval = \"3s\"\n[deployer]\nprobation = \"5s\"\n[monitor]\ntimeout = \"4s\"\n"
    );
    let s = resolve(&text).unwrap();
    let printed = s.to_toml();
    let again = resolve(&printed).unwrap_or_else(|e| panic!("{e:?}\n{printed}"));
    assert_eq!(again.to_toml(), printed);
    assert!(s.changed_keys(&again).is_empty());
    assert_eq!(again.profile.cluster.probe_interval, Duration::from_secs(3));
    assert_eq!(again.profile.monitor.interval, Duration::from_secs(45));
    assert_eq!(again.profile.monitor.timeout, Duration::from_secs(4));
    assert_eq!(again.max_package, 100 << 20);
    // A scoped key is printed as the table it was written as, not as JSON
    // in a string.
    assert!(
        printed.contains(&format!("[[operators]]\nkey = \"{key}\"\nmodules = [\"web-*\"]\n")),
        "{printed}"
    );
    assert!(!printed.contains("{\\\"key"), "{printed}");
}

#[test]
fn a_bad_value_is_refused_with_its_key() {
    let cases = [
        ("name = \"web 1\"", "name"),
        ("cluster = \"\"", "cluster"),
        ("tags = { \"bad key\" = \"x\" }", "tags"),
        ("bind = \"nowhere\"", "bind"),
        ("advertise = \"10.0.0.5:port\"", "advertise"),
        ("http = \"localhost\"", "http"),
        ("max_uploads = 0", "max_uploads"),
        ("operators = [\"cjop1nope\"]", "operators"),
        ("status_interval = \"50ms\"", "status_interval"),
        ("log_level = \"conjoiner=loud\"", "log_level"),
        ("[membership]\nmax_links = 3", "membership.max_links"),
        ("[monitor]\ntimeout = \"20s\"", "monitor.timeout"),
        ("[deployer]\nchunk_bytes = \"2M\"", "deployer.chunk_bytes"),
        ("[deployer]\nparallel_orders = 0", "deployer.parallel_orders"),
        ("[transponder]\ndedup_capacity = 0", "transponder.dedup_capacity"),
    ];
    for (text, key) in cases {
        let e = resolve(text).err().unwrap_or_else(|| panic!("{text} was taken"));
        assert_eq!(e.key, key, "{text}: {e:?}");
        assert!(!e.message.is_empty());
    }
}

#[test]
fn rust_log_wins_over_the_files_log_level() {
    let given = file("log_level = \"debug\"");
    assert_eq!(AgentSettings::resolve(&given, None).unwrap().log_level, "debug");
    assert_eq!(AgentSettings::resolve(&given, Some("warn")).unwrap().log_level, "warn");
    assert_eq!(AgentSettings::resolve(&given, Some(" ")).unwrap().log_level, "debug");
}

#[test]
fn a_reload_takes_tags_log_level_and_operators_and_refuses_the_rest_by_name() {
    let running = resolve("name = \"n1\"\ntags = { role = \"web\" }\nbind = \"0.0.0.0:7946\"\n").unwrap();
    let key = crate::command::operator_key::OperatorSecret::generate()
        .public()
        .to_string();
    let wanted = resolve(&format!(
        "name = \"n1\"\ntags = {{ role = \"db\" }}\nbind = \"0.0.0.0:8000\"\nlog_level = \"debug\"\n\
         operators = [\"{key}\"]\n[membership]\nprobe_interval = \"1s\"\n"
    ))
    .unwrap();
    let (next, outcome) = running.reload(&wanted);
    assert_eq!(outcome.taken, ["log_level", "operators", "tags"]);
    assert_eq!(outcome.refused, ["bind", "membership.probe_interval"]);
    assert_eq!(next.tags["role"], "db");
    assert_eq!((next.log_level.as_str(), next.operators.len()), ("debug", 1));
    assert_eq!(next.bind, "0.0.0.0:7946", "refused: kept until the next start");
    assert_eq!(
        next.profile.cluster.probe_interval,
        running.profile.cluster.probe_interval
    );
    // Reloading the same file again takes nothing more, and refuses the same.
    let (_, again) = next.reload(&wanted);
    assert!(again.taken.is_empty());
    assert_eq!(again.refused, ["bind", "membership.probe_interval"]);
    let (_, none) = running.reload(&running);
    assert_eq!(none, Reload::default());
}
