//! The benchmark wrapper object (`lb-bench`: programs lb_bench, bench_pass, bench_parse and
//! the forwarding-rate generator, sink and reflector) is built with the other eBPF objects by
//! lb-dataplane's build script; embed it from there, so no production binary carries it.
fn main() {
    let dir = std::env::var("DEP_LB_EBPF_OBJECTS_OUT_DIR")
        .expect("lb-dataplane's build script passes its OUT_DIR (links = \"lb-ebpf-objects\")");
    println!("cargo::rustc-env=LB_BENCH_OBJECT={dir}/lb-bench");
    println!("cargo::rerun-if-env-changed=DEP_LB_EBPF_OBJECTS_OUT_DIR");
}
