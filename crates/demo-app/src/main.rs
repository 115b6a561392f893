//! The demo application as a binary of its own, small enough to build statically and
//! put in a `FROM scratch` image. `ripcord demo-app` runs the same code.

use clap::Parser;

fn main() {
    std::process::exit(ripcord_demo_app::run(ripcord_demo_app::DemoAppArgs::parse()));
}
