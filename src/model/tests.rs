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
