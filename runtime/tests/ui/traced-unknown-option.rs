#[steadfast::traced(target = "audit")]
async fn handler(id: u64) -> u64 {
    id
}

fn main() {}
