#[steadfast::traced(level = "loud")]
async fn lookup(id: u64) -> u64 {
    id
}

fn main() {}
