#[steadfast::traced]
fn lookup(id: u64) -> u64 {
    id
}

fn main() {}
