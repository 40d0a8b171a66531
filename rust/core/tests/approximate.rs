//! The approximate methods (BP, TRW, mean field, Gibbs) and the `Method` front door,
//! against enumeration of every labelling on small graphs.

mod common;

use common::{close, enumerate, grid, problem, random_case, scored};
use expsoftmax_core::interrupt::Stop;
use expsoftmax_core::kernels::rng::Rng;
use expsoftmax_core::{Entry, Error, Graph, Method, Value};

fn method(name: &str, opts: &[(&str, Value)], g: &Graph, entry: Entry) -> Result<Method, Error> {
    method_c(name, opts, g, entry, 3)
}

fn method_c(
    name: &str,
    opts: &[(&str, Value)],
    g: &Graph,
    entry: Entry,
    classes: usize,
) -> Result<Method, Error> {
    let opts: Vec<(String, Value)> = opts
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Method::parse(name, &opts, g, entry, classes)
}

fn tight() -> Vec<(&'static str, Value)> {
    vec![("max_iter", Value::Int(2000)), ("tol", Value::Float(1e-12))]
}

/// On a forest BP and TRW (appearances all one there) are exact sum-product.
#[test]
fn bp_and_trw_equal_enumeration_on_forests() {
    let mut rng = Rng::stream(7, &[]);
    for trial in 0..40 {
        let case = random_case(&mut rng, 2 + trial % 6, 1 + trial % 3, 1.0, 0.0);
        let (log_z, nm, em, _) = enumerate(&case);
        for name in ["bp", "trw"] {
            for sched in ["parallel", "checkerboard"] {
                let mut o = tight();
                o.push(("schedule", Value::Str(sched.into())));
                let m = method(name, &o, &case.graph, Entry::Infer).unwrap();
                let r = m.infer(&problem(&case), true).unwrap().marginals;
                assert!(
                    (r.log_z[0] - log_z).abs() < 1e-8,
                    "{name} {sched} trial {trial}"
                );
                assert!(close(&r.node, &nm, 1e-8) && close(r.edge.as_ref().unwrap(), &em, 1e-8));
            }
        }
    }
}

/// TRW's log Z bounds the exact one from above and mean field's from below; BP's beliefs
/// are close at weak coupling. Random 3x3 grids, C = 2 and 3.
#[test]
fn trw_and_mean_field_bound_log_z_on_grids() {
    let mut rng = Rng::stream(11, &[]);
    for trial in 0..12 {
        let (c, scale) = (2 + trial % 2, if trial < 6 { 0.3 } else { 1.0 });
        let case = scored(&mut rng, grid(3, 3), c, scale, 0.0);
        let (log_z, nm, _, _) = enumerate(&case);
        let pb = problem(&case);
        let run = |name: &str| {
            let m = method(name, &tight(), &case.graph, Entry::Infer).unwrap();
            m.infer(&pb, false).unwrap().marginals
        };
        let (trw, mf, bp) = (run("trw"), run("mean_field"), run("bp"));
        assert!(
            trw.log_z[0] >= log_z - 1e-9,
            "TRW {} < exact {log_z}",
            trw.log_z[0]
        );
        assert!(
            mf.log_z[0] <= log_z + 1e-9,
            "MF {} > exact {log_z}",
            mf.log_z[0]
        );
        if scale < 0.5 {
            assert!(
                close(&bp.node, &nm, 0.02),
                "BP beliefs far from the marginals"
            );
            assert!((bp.log_z[0] - log_z).abs() < 0.05);
        }
    }
}

/// Gibbs marginals lie within 5 standard errors of the exact ones, and AIS's log Z within
/// 5 of its standard errors (plus a small allowance for AIS's bias).
#[test]
fn gibbs_marginals_and_ais_agree_with_enumeration() {
    let mut rng = Rng::stream(3, &[]);
    let case = scored(&mut rng, grid(3, 3), 2, 0.7, 0.0);
    let (log_z, nm, _, _) = enumerate(&case);
    let o = [
        ("num_samples", Value::Int(4000)),
        ("burn_in", Value::Int(50)),
        ("seed", Value::Int(1)),
        ("ais_steps", Value::Int(200)),
        ("ais_runs", Value::Int(32)),
    ];
    let m = method("gibbs", &o, &case.graph, Entry::Infer).unwrap();
    let r = m.infer(&problem(&case), true).unwrap();
    let ex = r.error_bars.expect("Gibbs error bars");
    for (k, (&p, &q)) in r.marginals.node.iter().zip(&nm).enumerate() {
        assert!(
            (p - q).abs() <= 5.0 * ex.node_stderr[k] + 1e-3,
            "node entry {k}: {p} vs {q}"
        );
    }
    assert!((r.marginals.log_z[0] - log_z).abs() <= 5.0 * ex.log_z_stderr[0] + 0.02);
    assert!(ex.rhat[0] < 1.1);
}

/// "auto" picks exact on forests and on graphs whose junction tree fits `max_states`, BP
/// on others and Gibbs to sample them; every bad name, type or range is refused with an
/// option error that names it.
#[test]
fn method_parse_applies_the_auto_rule_and_checks_every_option() {
    let (chain, g, wide) = (Graph::chain(4).unwrap(), grid(2, 3), grid(30, 30));
    let auto = |g: &Graph, o: &[(&str, Value)], e| method("auto", o, g, e).unwrap().name();
    assert_eq!(auto(&chain, &[], Entry::Infer), "exact");
    assert_eq!(auto(&g, &[], Entry::Infer), "exact");
    assert_eq!(auto(&g, &[], Entry::Sample), "exact");
    // 2 x 3 grid: cliques of 3 nodes, 27 entries at C = 3.
    let small = [("max_states", Value::Int(26))];
    assert_eq!(auto(&g, &small, Entry::Infer), "bp");
    assert_eq!(
        auto(&g, &[("max_states", Value::Int(27))], Entry::Infer),
        "exact"
    );
    assert_eq!(auto(&wide, &[], Entry::Infer), "bp");
    assert_eq!(
        auto(&wide, &[("max_iter", Value::Int(3))], Entry::Infer),
        "bp"
    );
    assert_eq!(auto(&wide, &[], Entry::Sample), "gibbs");
    match method("exact", &[], &wide, Entry::Infer) {
        Err(Error::NotForest(m)) => assert!(m.contains("31 nodes") && m.contains("max_states")),
        other => panic!("expected the budget error, got {other:?}"),
    }
    assert!(matches!(
        method("exact", &small, &g, Entry::Infer),
        Err(Error::NotForest(_))
    ));
    let refused = |name: &str, o: &[(&str, Value)], entry: Entry, needle: &str| match method(
        name, o, &g, entry,
    ) {
        Err(Error::Option(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("{name} {o:?}: expected an option error, got {other:?}"),
    };
    refused("nope", &[], Entry::Infer, "unknown method 'nope'");
    refused(
        "bp",
        &[("max_iters", Value::Int(3))],
        Entry::Infer,
        "max_iters",
    );
    refused(
        "bp",
        &[("max_iter", Value::Float(2.5))],
        Entry::Infer,
        "max_iter",
    );
    refused(
        "bp",
        &[("damping", Value::Float(1.0))],
        Entry::Infer,
        "damping",
    );
    refused(
        "bp",
        &[("schedule", Value::Str("x".into()))],
        Entry::Infer,
        "schedule",
    );
    refused(
        "gibbs",
        &[("seed", Value::Float(1.5))],
        Entry::Infer,
        "seed",
    );
    refused(
        "gibbs",
        &[("num_samples", Value::Str("4".into()))],
        Entry::Infer,
        "num_samples",
    );
    refused(
        "gibbs",
        &[("ais_runs", Value::Int(1 << 40))],
        Entry::Infer,
        "ais_runs",
    );
    refused(
        "gibbs",
        &[("num_samples", Value::Int(5))],
        Entry::Sample,
        "num_samples",
    );
    refused(
        "gibbs",
        &[("ais_steps", Value::Int(5))],
        Entry::Decode,
        "ais_steps",
    );
    refused(
        "gibbs",
        &[("init", Value::Str("gold".into()))],
        Entry::Infer,
        "gold",
    );
    refused(
        "trw",
        &[("edge_appearance", Value::Float(0.0))],
        Entry::Infer,
        "edge_appearance",
    );
    refused("bp", &[("tol", Value::Bool(true))], Entry::Infer, "tol");
    let ok = method(
        "bp",
        &[("schedule", Value::Str("flooding".into()))],
        &g,
        Entry::Infer,
    );
    assert!(
        matches!(ok, Ok(Method::Bp(o)) if o.schedule == expsoftmax_core::loopy::Schedule::Parallel)
    );
}

/// A raised stop flag ends loopy and Gibbs runs with `Interrupted`.
#[test]
fn a_raised_stop_interrupts_long_runs() {
    let mut rng = Rng::stream(5, &[]);
    let case = scored(&mut rng, grid(6, 6), 3, 1.0, 0.0);
    let stop = Stop::new();
    stop.raise();
    let pb = problem(&case).with_stop(&stop);
    for name in ["bp", "trw", "mean_field", "gibbs"] {
        let m = method(name, &[], &case.graph, Entry::Infer).unwrap();
        assert_eq!(
            m.infer(&pb, true).unwrap_err(),
            Error::Interrupted,
            "{name}"
        );
    }
}

/// Outputs too large for memory are refused by name before anything is allocated.
#[test]
fn oversized_requests_are_refused_not_aborted() {
    let case = scored(
        &mut Rng::stream(1, &[]),
        Graph::chain(1000).unwrap(),
        2,
        1.0,
        0.0,
    );
    let m = method("exact", &[], &case.graph, Entry::Sample).unwrap();
    match m.sample(&problem(&case), 1 << 62, Some(0)) {
        Err(Error::Memory(msg)) => assert!(msg.contains("samples"), "{msg}"),
        other => panic!("expected a memory error, got {other:?}"),
    }
    assert!(matches!(
        Graph::new((u32::MAX - 2) as usize, vec![]),
        Err(Error::Memory(_))
    ));
}
