//! Documentation: every builtin, prelude function and test-module function
//! has a signature and description for `doc`, and docs/REFERENCE.md is the
//! current output of `valk --reference` (regenerate it with
//! `cargo run --release -- --reference > docs/REFERENCE.md`).

use valkyria::{Interpreter, Mode, Value, TEST_MODULE};

#[test]
fn every_builtin_has_a_signature_and_description() {
    let interp = Interpreter::new(Mode::Script);
    for b in &interp.vm.builtins {
        assert!(!b.doc.trim().is_empty(), "`{}` has no description", b.name);
        let first = b
            .signature
            .trim_start_matches('(')
            .split([' ', ')'])
            .next()
            .unwrap_or("");
        assert_eq!(first, b.name, "signature of `{}`: {}", b.name, b.signature);
    }
}

/// The globals, other than builtins, that have no documentation after
/// `src` runs; names like `test/*x*` are private helpers.
fn undocumented(interp: &mut Interpreter, src: &str, name: &str) -> Vec<String> {
    interp.eval_str(src, name).expect("loads");
    interp
        .vm
        .global_names()
        .into_iter()
        .filter(|s| !matches!(interp.vm.global(*s), Some(Value::Builtin(_))))
        .map(|s| interp.vm.syms.name(s).to_string())
        .filter(|n| !n.contains('*') && interp.vm.library.docs.get(n).is_none())
        .collect()
}

#[test]
fn every_prelude_and_test_module_name_is_documented() {
    let mut interp = Interpreter::new(Mode::Script);
    let missing = undocumented(&mut interp, TEST_MODULE, "src/modules/test.valk");
    assert!(missing.is_empty(), "undocumented: {:?}", missing);
    let missing = undocumented(&mut interp, "(fun {helper x} {x})", "<test>");
    assert_eq!(
        missing,
        vec!["helper".to_string()],
        "the check sees new names"
    );
}

#[test]
fn the_reference_is_up_to_date() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_valk"))
        .arg("--reference")
        .output()
        .expect("cannot run valk");
    assert!(output.status.success());
    let generated = String::from_utf8(output.stdout).unwrap();
    let path = format!("{}/docs/REFERENCE.md", root);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if std::env::var_os("VALK_UPDATE_REFERENCE").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    assert!(
        current == generated,
        "docs/REFERENCE.md is out of date: run `cargo run --release -- --reference > docs/REFERENCE.md`"
    );
    for b in Interpreter::new(Mode::Script).vm.builtins.iter() {
        assert!(current.contains(b.signature), "{} missing", b.name);
    }
}
