//! Builds the eBPF programs (gateway-ebpf) for the bpf target and embeds the object.
use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    if which::which("bpf-linker").is_err() {
        bail!(
            "bpf-linker is not installed, so the eBPF programs cannot be built; \
             run `scripts/setup.sh` as root (cargo xtask demo/test do this for you)"
        );
    }
    let package = aya_build::Package {
        name: "gateway-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the eBPF programs (gateway-ebpf) failed")
}
