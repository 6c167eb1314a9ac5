use super::*;

#[test]
fn field_set_holds_every_field_in_catalog_order() {
    let mut set: FieldSet = Field::ALL.iter().rev().copied().collect();
    assert_eq!(set.len(), Field::ALL.len());
    assert!(set.iter().eq(Field::ALL.iter().copied()), "catalog order");
    assert!(!set.insert(Field::Odometer), "already there");
    set.remove(Field::Odometer);
    assert!(!set.contains(Field::Odometer));
    assert!(set.contains(Field::LastUpdate) && set.contains(Field::Speed));
    assert_eq!(set.len(), Field::ALL.len() - 1);
    assert!(FieldSet::default().is_empty());
}

#[test]
fn catalog_keys_are_unique_and_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for f in Field::ALL {
        let key = f.key();
        assert!(seen.insert(key), "duplicate key {key}");
        assert!(key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert_eq!(Field::from_key(key), Some(*f));
    }
}

#[test]
fn numeric_sensors_with_state_class_have_units_or_are_counts() {
    for f in Field::ALL {
        let s = f.spec();
        if s.device_class.is_some() && s.kind == FieldKind::Number {
            assert!(s.unit.is_some(), "{} has a device class but no unit", s.key);
        }
    }
}

/// Home Assistant rejects (with a warning) device classes combined with state classes
/// or units it does not allow; these are its rules for the classes the catalog uses.
#[test]
fn device_class_state_class_and_unit_are_valid_for_home_assistant() {
    let allowed = |dc: &str| -> Option<(&[&str], &[&str])> {
        Some(match dc {
            "distance" => (&["measurement", "total", "total_increasing"], &["km", "m"]),
            "speed" => (&["measurement"], &["km/h"]),
            "temperature" => (&["measurement"], &["°C"]),
            "pressure" => (&["measurement"], &["kPa"]),
            "voltage" => (&["measurement"], &["V"]),
            "current" => (&["measurement"], &["A"]),
            "battery" => (&["measurement"], &["%"]),
            "duration" => (
                &["measurement", "total", "total_increasing"],
                &["min", "d", "h", "s"],
            ),
            "volume" => (&["total", "total_increasing"], &["L"]),
            "volume_storage" => (&["measurement"], &["L"]),
            "data_size" => (
                &["measurement", "total", "total_increasing"],
                &["MiB", "KiB", "GiB"],
            ),
            "timestamp" | "date" | "enum" => (&[], &[]),
            _ => return None,
        })
    };
    for f in Field::ALL {
        let s = f.spec();
        let Some(dc) = s.device_class else { continue };
        if s.kind == FieldKind::Binary {
            continue;
        }
        let (state_classes, units) =
            allowed(dc).unwrap_or_else(|| panic!("{}: unchecked device class {dc}", s.key));
        if let Some(sc) = s.state_class {
            assert!(
                state_classes.contains(&sc),
                "{}: {dc} does not allow state_class {sc}",
                s.key
            );
        }
        match s.unit {
            Some(u) => assert!(
                units.contains(&u),
                "{}: {dc} does not allow unit {u}",
                s.key
            ),
            None => assert!(units.is_empty(), "{}: {dc} needs a unit", s.key),
        }
    }
}

#[test]
fn vehicle_id_sanitises() {
    assert_eq!(VehicleId::new("LB1 23/4#").unwrap().as_str(), "LB1_23_4_");
    assert!(VehicleId::new("///").is_none());
    assert!(VehicleId::new("").is_none());
}

#[test]
fn upstream_ids_that_are_safe_stay_as_they_are() {
    assert_eq!(
        VehicleId::for_upstream("ex", "T-100_a").unwrap().as_str(),
        "exT-100_a"
    );
    let longest = "9".repeat(62);
    assert_eq!(
        VehicleId::for_upstream("ex", &longest).unwrap().as_str(),
        format!("ex{longest}")
    );
    assert!(VehicleId::for_upstream("ex", "").is_none());
}

#[test]
fn upstream_ids_that_sanitise_alike_stay_apart() {
    // The hash is the first 5 bytes of SHA-1 of the id's UTF-8 bytes (`sha1sum`).
    let a = VehicleId::for_upstream("ex", "粤B12345").unwrap();
    let b = VehicleId::for_upstream("ex", "京B12345").unwrap();
    assert_eq!(a.as_str(), "ex_B12345_93e605781c");
    assert_eq!(b.as_str(), "ex_B12345_27c0f825f6");
    // A safe id and an unsafe one that sanitises to it are two vehicles.
    let plain = VehicleId::for_upstream("ex", "A_1").unwrap();
    let dotted = VehicleId::for_upstream("ex", "A.1").unwrap();
    assert_ne!(plain, dotted);
    // Long ids alike in their first 62 characters are two vehicles, each 64 long.
    let long_a = format!("{}a", "9".repeat(199));
    let long_b = format!("{}b", "9".repeat(199));
    let (la, lb) = (
        VehicleId::for_upstream("ex", &long_a).unwrap(),
        VehicleId::for_upstream("ex", &long_b).unwrap(),
    );
    assert_ne!(la, lb);
    assert_eq!(la.as_str().len(), 64);
    // Stable: the same id is the same vehicle, and safe for topics.
    assert_eq!(VehicleId::for_upstream("ex", "粤B12345").unwrap(), a);
    for id in [&a, &b, &dotted, &la] {
        assert_eq!(
            VehicleId::new(id.as_str()).as_ref(),
            Some(id),
            "{id} is topic-safe"
        );
    }
}

proptest::proptest! {
    #[test]
    fn upstream_ids_map_one_to_one(x in "\\PC{1,80}", y in "\\PC{1,80}") {
        let (a, b) = (VehicleId::for_upstream("ex", &x), VehicleId::for_upstream("ex", &y));
        if x != y {
            proptest::prop_assert_ne!(a.clone(), b);
        }
        let a = a.unwrap();
        proptest::prop_assert!(a.as_str().len() <= 64);
        proptest::prop_assert_eq!(VehicleId::new(a.as_str()), Some(a));
    }
}

#[test]
fn floats_round_and_integral_values_become_ints() {
    assert_eq!(Value::float(12.0), Some(Value::Int(12)));
    assert_eq!(Value::float(12.34567), Some(Value::Float(12.346)));
    assert_eq!(Value::float(f64::NAN), None);
}

#[test]
fn position_rejects_null_island_and_out_of_range() {
    assert!(Position::new(0.0, 0.0).is_none());
    assert!(Position::new(91.0, 0.0).is_none());
    assert!(Position::new(31.2, 121.4).is_some());
}

#[test]
fn merge_keeps_absent_values() {
    let mut a = VehicleState::default();
    a.set(Field::Speed, 10i64).set(Field::Odometer, 100i64);
    let mut b = VehicleState::default();
    b.set(Field::Speed, 20i64);
    a.merge(b);
    assert_eq!(a.get(Field::Speed), Some(&Value::Int(20)));
    assert_eq!(a.get(Field::Odometer), Some(&Value::Int(100)));
}

#[test]
fn a_value_is_two_words_and_text_reads_as_text() {
    // A vehicle holds dozens of values: 24 bytes each (a `String` inline) instead of 16
    // cost 2 MB at 10 000 vehicles.
    assert_eq!(std::mem::size_of::<Value>(), 16);
    assert_eq!(std::mem::size_of::<(Field, Value)>(), 24);
    let v = Value::from("LOCKED");
    assert_eq!(v.to_payload(), "LOCKED");
    assert_eq!(serde_json::to_string(&v).unwrap(), "\"LOCKED\"");
}

/// A text value is one thin pointer (what keeps a `Value` at 16 bytes), and an absent one
/// costs nothing more. Measured under `cargo test` (debug). Growing fails: see
/// docs/ARCHITECTURE.md, "Memory" (`-Zprint-type-sizes` shows the layout).
#[test]
fn a_text_keeps_its_size_of_one_thin_pointer() {
    let size = std::mem::size_of::<Text>();
    assert!(
        size <= 8,
        "model::Text grew to {size} bytes (8): a Value would grow with it, see \
         docs/ARCHITECTURE.md \"Memory\""
    );
    assert_eq!(
        std::mem::size_of::<Option<Text>>(),
        size,
        "None needs no room"
    );
}
