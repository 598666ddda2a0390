pub fn run(_d: Option<std::time::Duration>) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
