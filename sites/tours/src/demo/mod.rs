//! The local multi-site demo: [`topology`] (sites, ports, config files; pure), [`supervisor`]
//! (child processes), [`local`] (start-up and readiness), [`walkthrough`] (the scripted tour)
//! and [`status`] (the status page).

pub mod local;
pub mod mesh;
pub mod status;
pub mod supervisor;
pub mod topology;
pub mod walkthrough;
