#[steadfast::no_retry]
async fn create_user() {}

fn main() {}
