#[steadfast::traced(fields(trace_id = 1, rpc.method = "x", user.id = 2, user.id = 3))]
async fn handler(id: u64) -> u64 {
    id
}

fn main() {}
