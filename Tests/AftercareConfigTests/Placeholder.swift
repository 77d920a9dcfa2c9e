// Tests for AftercareConfigTests are added with the work they prove.
import Testing
