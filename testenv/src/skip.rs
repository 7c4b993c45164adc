//! The rule for tests whose external dependency (control plane, Azurite, Python) is missing:
//! skip with a printed reason, or fail when `FLEETSCORE_REQUIRE_ALL=1` (as `scripts/test` sets).

/// The environment variable that turns every skip into a failure.
pub const REQUIRE_ALL_VAR: &str = "FLEETSCORE_REQUIRE_ALL";

/// Whether missing dependencies must fail tests (`FLEETSCORE_REQUIRE_ALL` is `1` or `true`).
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_VAR).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Reports that a test cannot run because `reason`: panics when [`require_all`] holds, otherwise
/// prints the reason to stderr; the caller then returns early.
///
/// ```no_run
/// if std::env::var_os("FLEETSCORE_PYTHON").is_none() {
///     fleetscore_testenv::skip::skip_or_fail("FLEETSCORE_PYTHON is not set");
///     return;
/// }
/// ```
#[track_caller]
pub fn skip_or_fail(reason: impl std::fmt::Display) {
    if require_all() {
        panic!("{reason} ({REQUIRE_ALL_VAR}=1 forbids skipping)");
    }
    eprintln!("SKIPPED: {reason}");
}
