fn main() {
    eprintln!("imks-loadgen: not built yet (tracked in issue 4)");
    std::process::exit(2);
}
