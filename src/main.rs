//! The `ripcord` binary: a thin shell over the library's CLI, which maps every outcome
//! to a documented exit code.

fn main() {
    std::process::exit(ripcord::cli::main());
}
