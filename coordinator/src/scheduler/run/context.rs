//! What the scheduler knows of a result besides the attempt itself: whether another agent could
//! take the test's retry, and the lease's tally when it was the lease's last result.

/// Whether an agent other than the one that just reported could take a test's retry. Where none
/// can, the same agent retries an infrastructure error once (it may have been passing), and the
/// same error there again settles the test, saying why, instead of failing the same way until the
/// retries run out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Elsewhere {
    /// Another agent is connected...
    pub connected: bool,
    /// ...and one with Docker, for tests that need services.
    pub with_docker: bool,
}

impl Elsewhere {
    /// For results that do not come from a live agent's report (a lost agent, a resumed run):
    /// that agent, or another, may well take the retry.
    pub const ASSUMED: Elsewhere = Elsewhere {
        connected: true,
        with_docker: true,
    };
}

/// What the scheduler knows of a result besides the attempt itself.
#[derive(Clone, Debug)]
pub(crate) struct Context {
    /// Set when this was the last result of its lease.
    pub tally: Option<LeaseTally>,
    /// The result's credits, which go with its history update.
    pub credit: Option<crate::history::credits::Credit>,
    pub elsewhere: Elsewhere,
}

impl Context {
    /// A result the scheduler made itself (a lost agent's test, a resumed run's result).
    pub const ASSUMED: Context = Context {
        tally: None,
        elsewhere: Elsewhere::ASSUMED,
        credit: None,
    };
}

/// A lease's results once all are in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseTally {
    pub tests: u32,
    pub failed: u32,
}
