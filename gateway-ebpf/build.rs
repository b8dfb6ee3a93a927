//! Rebuilds the eBPF object when bpf-linker changes, and fails early when it is missing.
use which::which;

fn main() {
    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if target_arch != "bpf" {
        return;
    }
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found ({err}); run scripts/setup.sh");
            std::process::exit(1);
        }
    }
}
