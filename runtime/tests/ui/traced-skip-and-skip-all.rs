#[steadfast::traced(skip_all, skip(password))]
async fn login(user: String, password: String) -> bool {
    !user.is_empty() && !password.is_empty()
}

fn main() {}
