fn main() {
    eprintln!("krgadm: not built yet");
    std::process::exit(1);
}
