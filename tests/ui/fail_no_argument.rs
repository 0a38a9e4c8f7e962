#[forkless::main]
async fn main() {}
