// Tests for AftercareDaemonTests are added with the work they prove.
import Testing
