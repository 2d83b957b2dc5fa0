//! Registers one instance in the registry named on the command line, prints `registered`,
//! and holds the registration until the process is killed: a service process, for the tests
//! that crash one (`kill -9`) and watch its registration go.
//!
//! Usage: `hold-registration <registry-url> <service> <id> <addr>`

use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, service, id, addr] = args.as_slice() else {
        return Err("usage: hold-registration <registry-url> <service> <id> <addr>".into());
    };
    let registry = steadfast::registry::from_url(url).await?;
    let instance = steadfast::registry::Instance::new(service.as_str(), id.as_str(), addr.as_str());
    registry.register(&instance).await?;
    println!("registered");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
