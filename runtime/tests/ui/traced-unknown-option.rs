#[steadfast::traced(fields(id = 1))]
async fn lookup(id: u64) -> u64 {
    id
}

fn main() {}
