//! The netbooted side of Kura: the agent that runs as PID 1 in the initramfs and the builder of
//! that initramfs. Nothing is implemented here yet (issue 5); the crate exists so the workspace
//! has its final shape.
