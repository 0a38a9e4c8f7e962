struct Server;

impl Server {
    #[forkless::main]
    async fn run(self) {}
}

fn main() {}
